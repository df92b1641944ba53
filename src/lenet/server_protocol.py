"""uvicorn's httptools protocol with the two guards it lacks against slow or idle clients.

Read from uvicorn 0.54's ``protocols/http/httptools_impl.py``: the keep-alive timer is armed
only after a response is complete and every ``data_received`` cancels it, so a connection that
sends nothing, or trickles its request head a byte at a time, is held forever; and
``limit_concurrency`` is checked only once a request head is complete (so idle connections
never hit it) and is answered in plain text. This subclass

* gives every request head a deadline (``LENET_SERVE_READ_TIMEOUT`` seconds, from the moment
  the connection opens or the previous response is sent): a connection that has sent part of
  a head by then gets a 408 JSON answer and is closed, one that has sent nothing is closed;
* counts connections as they are accepted against ``limit_concurrency`` and answers those over
  it with a 503 JSON (``Retry-After``) and a close, before reading anything from them.

The body has its own deadline in the app (``read_body_limited``, 408).
"""

from __future__ import annotations

import asyncio
import json
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ENV_READ_TIMEOUT = "LENET_SERVE_READ_TIMEOUT"


def json_response(status: int, reason: str, message: str, extra: str = "") -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with a ``{"error": ...}`` body."""
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n"
    ).encode("ascii") + body


class LenetHttpProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` plus a request-head deadline and a JSON connection limit."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout = float(os.environ.get(ENV_READ_TIMEOUT) or 10.0)
        # Ours is checked at accept time instead of uvicorn's at head time (same meaning).
        self.max_connections = self.limit_concurrency
        self.limit_concurrency = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False  # bytes of a request head arrived since the timer was armed

    def connection_made(self, transport) -> None:  # type: ignore[override]
        """Accept, or refuse at once when over the connection limit; arm the head deadline."""
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self.logger.warning("connection limit (%d) reached: refused", self.max_connections)
            msg = "server busy: too many connections, try again"
            transport.write(json_response(503, "Service Unavailable", msg, "retry-after: 1\r\n"))
            transport.close()
            return
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_started = False
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_deadline)

    def _cancel_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; the next head is timed after its response
        if self._head_started:
            msg = f"request head not received within {self.head_timeout:g} s"
            self.transport.write(json_response(408, "Request Timeout", msg))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        """Note that a head has started (the timer runs until it is complete)."""
        if self._head_timer is not None:
            self._head_started = True
        super().data_received(data)

    def on_headers_complete(self) -> None:
        """The head is in: its deadline is met."""
        self._cancel_head_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """Time the next request head from here (uvicorn's keep-alive timer also runs)."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the timer with the connection."""
        self._cancel_head_deadline()
        super().connection_lost(exc)
