"""``lenet serve``: the HTTP prediction service and drawing page (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from lenet.cli import add_backend, add_min_confidence, add_top_k, bounded
from lenet.errors import LenetError
from lenet.httpguard import is_wildcard, parse_hosts, serve_hosts

log = logging.getLogger("lenet.serve")


_positive_int = bounded(int, 1)
_bounded_seconds = bounded(float, 0.001, 86400.0)
# Server processes, or torch threads per process: a few per core at most (beyond the cores they
# only queue for them; a typo like 1000 would fork a thousand model copies).
_worker_count = bounded(int, 1, 4 * (os.cpu_count() or 1))


def _seconds(text: str) -> float:
    """An argparse ``type``: a number of seconds in 0.001..86400 (not nan)."""
    v = _bounded_seconds(text)
    if v != v:  # nan compares false with both bounds
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return v


def _host_list(text: str) -> list[str]:
    """An argparse ``type``: comma-separated host names."""
    try:
        return parse_hosts(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub) -> None:
    """Add the ``serve`` verb."""
    p = sub.add_parser(
        "serve",
        description="Serve a drawing page at / and a JSON API (POST /api/predict, GET /api/health, "
        "GET /api/model, OpenAPI docs at /docs) with FastAPI + uvicorn. Binds to 127.0.0.1 unless "
        "--host says otherwise. Logs one line per request.",
    )
    p.add_argument("--model", metavar="CKPT", help="checkpoint (default: the bundled weights)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument(
        "--allowed-hosts",
        type=_host_list,
        default=[],
        metavar="NAMES",
        help="comma-separated names the Host header may carry besides localhost, 127.0.0.1, ::1 "
        "and the --host address (port ignored; '*' = any); other requests get 400, against DNS "
        "rebinding",
    )
    p.add_argument(
        "--port",
        type=bounded(int, 0, 65535),
        default=8000,
        help="port (default: 8000; 0 = any free)",
    )
    p.add_argument(
        "--workers",
        type=_worker_count,
        default=os.cpu_count() or 1,
        help="server processes, each loading the model once and using one core "
        f"(default: the number of cores, {os.cpu_count() or 1} here)",
    )
    p.add_argument(
        "--max-bytes",
        type=_positive_int,
        default=5_000_000,
        help="largest accepted request body in bytes (default: 5000000); larger gets 413",
    )
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=16_000_000,
        help="largest accepted image in pixels, checked from its header before decoding "
        "(default: 16000000, below lenet predict's 64 MP); larger gets 400 'image too large'",
    )
    p.add_argument(
        "--queue",
        type=_positive_int,
        default=64,
        help="requests per worker that may wait for a prediction behind the batch being "
        "computed (default: 64); more get 503 with Retry-After",
    )
    p.add_argument(
        "--read-timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds a client has to send a request head, and then its body (default: 10); "
        "a late body gets 408, a late head 408 or a close",
    )
    p.add_argument(
        "--limit-concurrency",
        type=_positive_int,
        default=512,
        metavar="N",
        help="open connections per worker (default: 512); more are answered 503 and closed",
    )
    p.add_argument(
        "--keep-alive",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="seconds an idle keep-alive connection stays open (default: 5)",
    )
    add_top_k(p, help="classes in top_k when a request does not say (default: 3)")
    add_min_confidence(
        p, help='answer digit null, reason "unsure", below this confidence (default: always answer)'
    )
    p.add_argument(
        "--threads",
        type=_worker_count,
        default=1,
        help="PyTorch threads per worker (default: 1; one small image gains nothing from more)",
    )
    add_backend(p)
    p.set_defaults(func=run)


def _check_host(host: str) -> None:
    """Warn when the service is reachable from other machines (only when asked for)."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        log.warning("listening on %s: reachable from other machines, no authentication", host)


def _check_names(host: str, allowed: list[str]) -> None:
    """On a wildcard address, say that other machines must use a name in --allowed-hosts."""
    if is_wildcard(host) and not allowed:
        log.warning(
            "requests naming this machine other than by localhost/127.0.0.1/::1 are refused "
            "(400): pass --allowed-hosts NAME,... (or '*') to accept them"
        )


def run(args: argparse.Namespace) -> int:
    """Load the model once (failing fast on a bad checkpoint), then run uvicorn."""
    try:
        import uvicorn

        from lenet.server import create_app, freeze_heap
        from lenet.server_protocol import ENV_READ_TIMEOUT
    except ImportError as e:
        raise LenetError(
            f"lenet serve needs the 'serve' extra ({e.name} is missing): pip install 'lenet[serve]'"
        ) from None
    import torch

    from lenet.predictor import Predictor

    torch.set_num_threads(args.threads)
    _check_host(args.host)
    _check_names(args.host, args.allowed_hosts)
    allowed_hosts = serve_hosts(args.host, args.allowed_hosts)
    # a bad checkpoint -> one clear line, exit 2
    predictor = Predictor(args.model, device="cpu", backend=args.backend)
    sha = predictor.info["checkpoint_sha256"][:12]
    log.info("model %s loaded (sha256 %s...)", predictor.name, sha)

    # The request-head deadline lives in the protocol, which reads it from the environment
    # (the same way in this process and in --workers processes).
    os.environ[ENV_READ_TIMEOUT] = str(args.read_timeout)
    common = dict(
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        server_header=False,
        loop="auto",  # uvloop when installed
        http="lenet.server_protocol:LenetHttpProtocol",  # httptools + deadlines (see there)
        limit_concurrency=args.limit_concurrency,
        timeout_keep_alive=args.keep_alive,
    )
    if args.workers == 1:
        app = create_app(
            predictor,
            max_bytes=args.max_bytes,
            top_k=args.top_k,
            min_confidence=args.min_confidence,
            allowed_hosts=allowed_hosts,
            queue=args.queue,
            read_timeout=args.read_timeout,
            max_pixels=args.max_pixels,
        )
        freeze_heap()
        uvicorn.run(app, **common)
        return 0
    # Several processes: each imports the app factory and loads the model once itself.
    os.environ.update(
        LENET_SERVE_MODEL=args.model or "",
        LENET_SERVE_MAX_BYTES=str(args.max_bytes),
        LENET_SERVE_TOP_K=str(args.top_k),
        LENET_SERVE_MIN_CONFIDENCE="" if args.min_confidence is None else str(args.min_confidence),
        LENET_SERVE_THREADS=str(args.threads),
        LENET_SERVE_BACKEND=args.backend,
        LENET_SERVE_ALLOWED_HOSTS=",".join(allowed_hosts),
        LENET_SERVE_MAX_PIXELS=str(args.max_pixels),
        LENET_SERVE_QUEUE=str(args.queue),
    )
    from lenet.serve_workers import APP, balanced_workers_available, run_workers

    if not balanced_workers_available():
        uvicorn.run(APP, factory=True, workers=args.workers, **common)
        return 0
    del predictor  # each worker loads its own; this process only supervises
    config = {k: v for k, v in common.items() if k not in ("host", "port")}
    try:
        return run_workers(args.workers, args.host, args.port, config)
    except OSError as e:
        raise LenetError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
