"""Load benchmark for ``lenet serve``: N requests at concurrency C against a loopback server.

``python -m lenet.bench.serve_load [--requests 2000] [--concurrency 1 16 64] [--workers N]``
starts a real ``lenet serve`` subprocess on a free loopback port (or uses ``--url``, loopback
only), POSTs canvas-like PNGs of MNIST test digits, and reports p50/p90/p99 latency, requests/s,
the error count, the accuracy of the answers and the client's own CPU use. The client is
asyncio on raw keep-alive streams (uvloop when installed) with the request bytes built once,
so it costs far less CPU than the server it measures. A benchmark: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from lenet.errors import LenetError

RUNNING = re.compile(r"Uvicorn running on (https?)://(\S+):(\d+)")


class ServerProcess:
    """A ``lenet serve`` subprocess on a free port; its log lines are kept in :attr:`lines`."""

    def __init__(self, *args: str, host: str = "127.0.0.1", timeout: float = 90.0, env=None):
        cmd = [sys.executable, "-m", "lenet", "serve", "--host", host, "--port", "0", *args]
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        # Drain stderr all the time: one log line per request would otherwise fill the pipe.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        # The address is logged when the socket is bound; with --workers the worker processes
        # accept only once they have loaded the model, so wait for /api/health too.
        while not (self._ready.wait(0.1) and self._healthy()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("lenet serve did not start:\n" + "\n".join(self.lines[-20:]))

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/api/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            time.sleep(0.1)
            return False

    def _read(self) -> None:
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            m = RUNNING.search(line)
            if m and not self._ready.is_set():
                scheme, host, port = m.groups()
                # Bound to every interface: talk to it by a loopback name (the Host allow-list
                # refuses "0.0.0.0", and the benchmark only runs against loopback).
                host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
                self.url = f"{scheme}://{host}:{port}"
                self._ready.set()

    @property
    def port(self) -> int:
        """The port the server bound."""
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout: float = 15.0) -> int | None:
        """Ctrl-C the server (graceful shutdown), kill it if it hangs; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT, as a user's Ctrl-C
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def canvas_png(digit28: np.ndarray, size: int = 280) -> bytes:
    """An MNIST digit as the drawing page would send it: dark ink on white, ``size`` px, PNG."""
    ink = Image.fromarray(255 - np.asarray(digit28, dtype=np.uint8), mode="L")
    img = ink.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_bodies(
    n: int = 100, data_dir: str | os.PathLike | None = None, size: int = 280
) -> list[tuple[bytes, int]]:
    """``n`` (PNG bytes, label) pairs from the MNIST test set (the first ``n`` digits).

    ``size`` is the canvas side in pixels: 280 is what the drawing page sends; a small one (28)
    makes the server's preprocessing nearly free, so the HTTP path itself is measured.
    """
    from lenet.data import load_split

    split = load_split("test", data_dir or "data")
    return [(canvas_png(split.images[i], size), int(split.labels[i])) for i in range(n)]


@dataclass
class BenchResult:
    """What one benchmark run measured."""

    requests: int
    concurrency: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    statuses: dict = field(default_factory=dict)
    accuracy: float | None = None
    first_errors: list = field(default_factory=list)
    client_cpu_s: float | None = None  # CPU time the benchmark client itself used
    client_cpu_share: float | None = None  # client CPU s per wall s (1.0 = one core busy)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return asdict(self)


def check_loopback(url: str) -> None:
    """Refuse to load-test anything but this machine."""
    host = urlsplit(url).hostname or ""
    try:
        ok = any(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise LenetError(f"{url}: the benchmark only runs against a loopback address")


class _Tally:
    """What the connections of one run saw (latencies in s, statuses, errors, right answers)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter = Counter()
        self.errors: list[str] = []
        self.correct = 0

    def failed(self, kind: str, message: str) -> None:
        """A request that got no HTTP answer (refused, reset, timed out, garbled)."""
        self.statuses[kind] += 1
        self.errors.append(message)


def build_requests(host: str, port: int, bodies: list[tuple[bytes, int]]) -> list[bytes]:
    """The raw HTTP/1.1 bytes of one keep-alive ``POST /api/predict`` per body, built once."""
    shown = f"[{host}]" if ":" in host else host  # an IPv6 literal goes in brackets
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: {shown}:{port}\r\n"
        "Content-Type: image/png\r\nContent-Length: {n}\r\n\r\n"
    )
    return [head.replace("{n}", str(len(b))).encode("ascii") + b for b, _ in bodies]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One response: (status, body, whether the server closes the connection after it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise ValueError("chunked responses are not expected from lenet serve")
    body = await reader.readexactly(length) if length else b""
    return status, body, close


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


async def _connection(
    addr: tuple[str, int],
    requests: list[bytes],
    labels: list[int],
    jobs: Iterator[int],
    out: _Tally,
    timeout: float,
) -> None:
    """One keep-alive connection sending requests back to back (reconnecting after a close)."""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        for i in jobs:  # shared iterator: each request index is taken once
            k = i % len(requests)
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(*addr)
                writer.write(requests[k])
                status, body, close = await asyncio.wait_for(_read_response(reader), timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
                out.latencies.append(time.perf_counter() - t0)
                out.failed(type(e).__name__, f"{type(e).__name__}: {e}")
                _close(writer)
                writer = None
                continue
            out.latencies.append(time.perf_counter() - t0)
            out.statuses[str(status)] += 1
            if status != 200:
                out.errors.append(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
            elif json.loads(body).get("digit") == labels[k]:
                out.correct += 1
            if close:
                _close(writer)
                writer = None
    finally:
        _close(writer)


async def _bench(
    url: str, bodies: list[tuple[bytes, int]], requests: int, concurrency: int, timeout: float
) -> BenchResult:
    parts = urlsplit(url)
    addr = (parts.hostname or "127.0.0.1", parts.port or 80)
    raw = build_requests(*addr, bodies)
    labels = [label for _, label in bodies]
    # One warm-up request per connection outside the measurement (first-call allocations).
    warm = iter(range(concurrency))
    await asyncio.gather(
        *(_connection(addr, raw, labels, warm, _Tally(), timeout) for _ in range(concurrency))
    )
    out = _Tally()
    jobs = iter(range(requests))
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(
        *(_connection(addr, raw, labels, jobs, out, timeout) for _ in range(concurrency))
    )
    seconds = time.perf_counter() - t0
    client_cpu = time.process_time() - cpu0

    ms = np.array(out.latencies) * 1000
    return BenchResult(
        requests=requests,
        concurrency=concurrency,
        seconds=round(seconds, 3),
        requests_per_s=round(requests / seconds, 1),
        p50_ms=round(float(np.percentile(ms, 50)), 2),
        p90_ms=round(float(np.percentile(ms, 90)), 2),
        p99_ms=round(float(np.percentile(ms, 99)), 2),
        max_ms=round(float(ms.max()), 2),
        errors=len(out.errors),
        statuses=dict(out.statuses),
        accuracy=round(out.correct / requests, 4),
        first_errors=out.errors[:5],
        client_cpu_s=round(client_cpu, 3),
        client_cpu_share=round(client_cpu / seconds, 3),
    )


def _run(coro):
    """Run on uvloop when it is installed (a cheaper client), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return uvloop.run(coro)  # pragma: no cover - Python 3.10


def run_benchmark(
    url: str,
    bodies: list[tuple[bytes, int]],
    requests: int = 2000,
    concurrency: int = 16,
    timeout: float = 60.0,
) -> BenchResult:
    """POST ``requests`` images to ``url``/api/predict over ``concurrency`` keep-alive connections.

    Each connection sends its next request as soon as the previous answer is in; ``timeout``
    (s) bounds each answer. The client's own CPU time is measured (``client_cpu_share`` is CPU
    seconds per wall second), so a run says whether the client was the bottleneck.
    """
    check_loopback(url)
    if requests < 1 or concurrency < 1 or not bodies:
        raise LenetError("requests, concurrency and bodies must all be at least 1")
    return _run(_bench(url, bodies, requests, concurrency, timeout))


def format_result(r: BenchResult) -> str:
    """One short human-readable report."""
    return (
        f"{r.requests} requests, concurrency {r.concurrency}: {r.seconds:.1f} s, "
        f"{r.requests_per_s:.1f} requests/s\n"
        f"latency p50 {r.p50_ms:.1f} ms, p90 {r.p90_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, "
        f"max {r.max_ms:.1f} ms\n"
        f"errors {r.errors}  statuses {r.statuses}  accuracy {100 * (r.accuracy or 0):.1f}%  "
        f"client CPU {r.client_cpu_s:.2f} s ({100 * (r.client_cpu_share or 0):.0f}% of one core)"
        + "".join(f"\n  {e}" for e in r.first_errors)
    )


def format_table(results: list[BenchResult]) -> str:
    """A Markdown table, one row per concurrency."""
    rows = [
        "| concurrency | requests | requests/s | p50 ms | p90 ms | p99 ms | errors | client CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        rows.append(
            f"| {r.concurrency} | {r.requests} | {r.requests_per_s:.0f} | {r.p50_ms:.2f} | "
            f"{r.p90_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | "
            f"{100 * (r.client_cpu_share or 0):.0f}% |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Command line: start a server (or use --url), run the benchmark, print the numbers."""
    p = argparse.ArgumentParser(prog="python -m lenet.bench.serve_load", description=__doc__)
    p.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    p.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[16],
        help="keep-alive connections; several values run one after another against one server "
        "(e.g. --concurrency 1 16 64)",
    )
    p.add_argument("--url", help="an already running server (loopback only)")
    p.add_argument("--model", help="checkpoint for the started server (default: bundled)")
    p.add_argument("--workers", type=int, help="--workers of the started server (default: its own)")
    p.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for the started lenet serve (repeat: --serve-arg=--queue --serve-arg=8)",
    )
    p.add_argument("--images", type=int, default=200, help="distinct MNIST test digits to send")
    p.add_argument(
        "--size", type=int, default=280, help="canvas side in pixels (default: 280, the page's)"
    )
    p.add_argument("--data-dir", default="data", help="MNIST folder (default: ./data)")
    p.add_argument("--json", action="store_true", help="print one JSON object per concurrency")
    args = p.parse_args(argv)
    if min(args.concurrency) < 1 or args.requests < 1 or args.size < 8:
        p.error("--requests and --concurrency must be at least 1, --size at least 8")
    try:
        bodies = make_bodies(args.images, args.data_dir, args.size)
        if args.url:
            results = [run_benchmark(args.url, bodies, args.requests, c) for c in args.concurrency]
        else:
            serve_args = list(args.serve_arg)
            if args.workers:
                serve_args += ["--workers", str(args.workers)]
            if args.model:
                serve_args += ["--model", args.model]
            with ServerProcess(*serve_args) as server:
                results = [
                    run_benchmark(server.url, bodies, args.requests, c) for c in args.concurrency
                ]
    except LenetError as e:
        print(f"lenet: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print("\n".join(json.dumps(r.to_dict()) for r in results))
    else:
        print("\n\n".join(format_result(r) for r in results))
        if len(results) > 1:
            print("\n" + format_table(results))
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
