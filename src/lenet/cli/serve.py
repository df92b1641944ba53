"""``lenet serve``: the HTTP prediction service and drawing page (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from lenet.cli import add_backend
from lenet.errors import LenetError

log = logging.getLogger("lenet.serve")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {v}")
    return v


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535 (0 = any free port): {v}")
    return v


def _probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {v}")
    return v


def register(sub) -> None:
    """Add the ``serve`` verb."""
    p = sub.add_parser(
        "serve", help="run the HTTP prediction service and drawing page",
        description="Serve a drawing page at / and a JSON API (POST /api/predict, GET /api/health, "
        "GET /api/model, OpenAPI docs at /docs) with FastAPI + uvicorn. Binds to 127.0.0.1 unless "
        "--host says otherwise. Logs one line per request.",
    )  # fmt: skip
    p.add_argument("--model", metavar="CKPT", help="checkpoint (default: the bundled weights)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default: 8000; 0 = any free)")
    p.add_argument(
        "--workers", type=_positive_int, default=1,
        help="server processes, each loading the model once (default: 1)",
    )  # fmt: skip
    p.add_argument(
        "--max-bytes", type=_positive_int, default=5_000_000,
        help="largest accepted request body in bytes (default: 5000000); larger gets 413",
    )  # fmt: skip
    p.add_argument(
        "--top-k", type=int, choices=range(1, 11), default=3, metavar="K",
        help="classes in top_k when a request does not say (default: 3)",
    )  # fmt: skip
    p.add_argument(
        "--min-confidence", type=_probability, metavar="P",
        help='answer digit null, reason "unsure", below this confidence (default: always answer)',
    )  # fmt: skip
    p.add_argument(
        "--threads", type=_positive_int, default=1,
        help="PyTorch threads per worker (default: 1; one small image gains nothing from more)",
    )  # fmt: skip
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


def run(args: argparse.Namespace) -> int:
    """Load the model once (failing fast on a bad checkpoint), then run uvicorn."""
    try:
        import uvicorn

        from lenet.server import create_app
    except ImportError as e:
        raise LenetError(
            f"lenet serve needs the 'serve' extra ({e.name} is missing): pip install 'lenet[serve]'"
        ) from None
    import torch

    from lenet.predictor import Predictor

    torch.set_num_threads(args.threads)
    _check_host(args.host)
    # a bad checkpoint -> one clear line, exit 2
    predictor = Predictor(args.model, device="cpu", backend=args.backend)
    info = predictor.info or {}
    sha = str(info.get("sha256") or info.get("checkpoint_sha256") or "")[:12]
    log.info("model %s loaded%s", predictor.name, f" (sha256 {sha}...)" if sha else "")

    common = dict(
        host=args.host, port=args.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=5, server_header=False,
    )  # fmt: skip
    if args.workers == 1:
        app = create_app(
            predictor, max_bytes=args.max_bytes, top_k=args.top_k,
            min_confidence=args.min_confidence,
        )  # fmt: skip
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
    )
    uvicorn.run("lenet.server:app_from_env", factory=True, workers=args.workers, **common)
    return 0
