"""Load benchmark for ``lenet serve``: N requests at concurrency C against a loopback server.

``python -m lenet.bench.serve_load [--requests 2000] [--concurrency 16] [--model CKPT] [--workers N]``
starts a real ``lenet serve`` subprocess on a free loopback port (or uses ``--url``, loopback
only), POSTs canvas-like PNGs of MNIST test digits, and reports p50/p90/p99 latency, requests/s,
the error count and the accuracy of the answers. A benchmark: it asserts nothing about time.
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


def make_bodies(n: int = 100, data_dir: str | os.PathLike | None = None) -> list[tuple[bytes, int]]:
    """``n`` (PNG bytes, label) pairs from the MNIST test set (the first ``n`` digits)."""
    from lenet.data import load_split

    split = load_split("test", data_dir or "data")
    return [(canvas_png(split.images[i]), int(split.labels[i])) for i in range(n)]


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


async def _bench(
    url: str, bodies: list[tuple[bytes, int]], requests: int, concurrency: int
) -> BenchResult:
    import httpx

    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: list[str] = []
    correct = 0
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:

        async def worker() -> None:
            nonlocal correct
            for i in counter:  # shared iterator: each request index is taken once
                body, label = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                try:
                    r = await client.post(
                        "/api/predict", content=body, headers={"Content-Type": "image/png"}
                    )
                    latencies.append(time.perf_counter() - t0)
                    statuses[str(r.status_code)] += 1
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    elif r.json().get("digit") == label:
                        correct += 1
                except httpx.HTTPError as e:
                    latencies.append(time.perf_counter() - t0)
                    statuses[type(e).__name__] += 1
                    errors.append(f"{type(e).__name__}: {e}")

        # One warm-up request outside the measurement (first-call allocations).
        await client.post(
            "/api/predict", content=bodies[0][0], headers={"Content-Type": "image/png"}
        )
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - t0

    ms = np.array(latencies) * 1000
    return BenchResult(
        requests=requests,
        concurrency=concurrency,
        seconds=round(seconds, 3),
        requests_per_s=round(requests / seconds, 1),
        p50_ms=round(float(np.percentile(ms, 50)), 2),
        p90_ms=round(float(np.percentile(ms, 90)), 2),
        p99_ms=round(float(np.percentile(ms, 99)), 2),
        max_ms=round(float(ms.max()), 2),
        errors=len(errors),
        statuses=dict(statuses),
        accuracy=round(correct / requests, 4),
        first_errors=errors[:5],
    )


def run_benchmark(
    url: str, bodies: list[tuple[bytes, int]], requests: int = 2000, concurrency: int = 16
) -> BenchResult:
    """POST ``requests`` images to ``url``/api/predict, ``concurrency`` at a time."""
    check_loopback(url)
    if requests < 1 or concurrency < 1 or not bodies:
        raise LenetError("requests, concurrency and bodies must all be at least 1")
    return asyncio.run(_bench(url, bodies, requests, concurrency))


def format_result(r: BenchResult) -> str:
    """One short human-readable report."""
    return (
        f"{r.requests} requests, concurrency {r.concurrency}: {r.seconds:.1f} s, "
        f"{r.requests_per_s:.1f} requests/s\n"
        f"latency p50 {r.p50_ms:.1f} ms, p90 {r.p90_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, "
        f"max {r.max_ms:.1f} ms\n"
        f"errors {r.errors}  statuses {r.statuses}  accuracy {100 * (r.accuracy or 0):.1f}%"
        + "".join(f"\n  {e}" for e in r.first_errors)
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: start a server (or use --url), run the benchmark, print the numbers."""
    p = argparse.ArgumentParser(prog="python -m lenet.bench.serve_load", description=__doc__)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--url", help="an already running server (loopback only)")
    p.add_argument("--model", help="checkpoint for the started server (default: bundled)")
    p.add_argument("--workers", type=int, default=1, help="--workers of the started server")
    p.add_argument("--images", type=int, default=200, help="distinct MNIST test digits to send")
    p.add_argument("--data-dir", default="data", help="MNIST folder (default: ./data)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        import httpx  # noqa: F401
    except ImportError:
        print("lenet: error: the benchmark needs httpx: pip install 'lenet[test]'", file=sys.stderr)
        return 2
    try:
        bodies = make_bodies(args.images, args.data_dir)
        if args.url:
            result = run_benchmark(args.url, bodies, args.requests, args.concurrency)
        else:
            serve_args = ["--workers", str(args.workers)]
            if args.model:
                serve_args += ["--model", args.model]
            with ServerProcess(*serve_args) as server:
                result = run_benchmark(server.url, bodies, args.requests, args.concurrency)
    except LenetError as e:
        print(f"lenet: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()) if args.json else format_result(result))
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
