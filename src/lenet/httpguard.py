"""ASGI middlewares that guard the service: a request log clients cannot forge, a Host allow-list."""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Iterable
from urllib.parse import quote

# The request log is the service's log: same logger as lenet.server's own lines.
log = logging.getLogger("lenet.server")

# Names that always mean this machine: a DNS-rebinding page cannot make a browser send them.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# RFC 3986 pchar (unreserved, sub-delims, ":" and "@") plus "/": a path made of these is logged
# as it is; anything else (control characters, spaces, "%", non-ASCII) is percent-encoded again.
PATH_SAFE = "/:@!$&'()*+,;=-._~"


def escape(text: str, spaces: bool = False) -> str:
    r"""``text`` in printable ASCII: controls, non-ASCII, ``\`` (and spaces, unless kept) escaped.

    ``"a\nb"`` -> ``a\nb`` (backslash, n), ``"é"`` -> ``\xe9``, ``" "`` -> ``\x20``: what a
    client sends can neither start a new log line nor pose as another space-separated field.
    """
    out = text.encode("unicode_escape").decode("ascii")
    return out if spaces else out.replace(" ", "\\x20")


def escape_path(path: str) -> str:
    """A decoded request path percent-encoded again where it is not plain URL text."""
    return quote(path, safe=PATH_SAFE, errors="backslashreplace")


def host_name(host: str) -> str:
    """The name in a Host header or a bind address: port, brackets and a final dot dropped.

    ``"LocalHost:8000"`` -> ``"localhost"``, ``"[::1]:8000"`` -> ``"::1"``, ``"::1"`` -> ``"::1"``.
    """
    host = host.strip().lower()
    if host.startswith("["):  # [IPv6] or [IPv6]:port
        return host[1:].partition("]")[0]
    if host.count(":") == 1:  # name:port or IPv4:port; more colons is a bare IPv6 address
        host = host.partition(":")[0]
    return host.rstrip(".")


def is_wildcard(bind: str) -> bool:
    """Whether a bind address listens on every interface (``0.0.0.0``, ``::``, empty)."""
    try:
        return ipaddress.ip_address(host_name(bind) or "0.0.0.0").is_unspecified
    except ValueError:
        return False


def serve_hosts(bind: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The names ``lenet serve --host BIND --allowed-hosts EXTRA`` accepts in a Host header.

    The loopback names, the bound name unless it is a wildcard, and ``extra`` (``*``: any).
    """
    names = [*LOOPBACK_HOSTS, *([] if is_wildcard(bind) else [bind]), *extra]
    return tuple(dict.fromkeys(n if n == "*" else host_name(n) for n in names))


def parse_hosts(text: str) -> list[str]:
    """``"a.lan, b.lan"`` -> ``["a.lan", "b.lan"]``; an empty name is a ValueError."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ValueError(f"empty host name in {text!r}")
    return names


class RequestLog:
    """Pure ASGI middleware: one log line per HTTP request (client, method, path, status, ms, extra).

    Everything the client controls is escaped (the path percent-encoded again, the rest with
    :func:`escape`), so a ``%0A`` in a path or a forged ``X-Forwarded-For`` stays on its line.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            ms = 1000 * (time.perf_counter() - start)
            client = scope.get("client") or ("-", 0)
            extra = scope.get("state", {}).get("log_extra", "")
            log.info(
                "%s %s %s %d %.1fms%s",
                escape(str(client[0])),  # may come from X-Forwarded-For (uvicorn proxy_headers)
                escape(scope["method"]),
                escape_path(scope["path"]),
                status,
                ms,
                f" {escape(extra, spaces=True)}" if extra else "",
            )


class HostAllowList:
    """Pure ASGI middleware: 400 unless the Host header names this server (DNS rebinding).

    A page on ``evil.example`` whose DNS later points at 127.0.0.1 can make a browser send
    requests here, but they carry ``Host: evil.example``: only the names in ``allowed`` (compared
    without port, case or brackets; ``*`` allows any) reach the app. A missing Host is refused.
    """

    def __init__(self, app, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS):
        self.app = app
        names = list(allowed_hosts)
        self.any = "*" in names
        self.allowed = frozenset(host_name(n) for n in names if n != "*")

    async def __call__(self, scope, receive, send):
        if self.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hosts = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"host"]
        if len(hosts) == 1 and host_name(hosts[0]) in self.allowed:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        hint = "--allowed-hosts NAME"
        if not hosts:
            message = "the request has no Host header"
        elif len(hosts) > 1:
            message = "the request has more than one Host header"
        else:
            name = escape(host_name(hosts[0]))
            message = f"host '{escape(hosts[0])}' is not allowed"
            hint = f"--allowed-hosts {name or 'NAME'}"
        message += f"; start lenet serve with {hint} to accept it"
        scope.setdefault("state", {})["log_extra"] = "refused: Host not allowed"
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
