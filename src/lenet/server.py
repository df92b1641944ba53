"""The HTTP prediction service: a FastAPI app around one :class:`~lenet.predictor.Predictor`.

Routes: ``GET /`` (the drawing page, served from ``lenet/static``), ``POST /api/predict``,
``POST /api/read`` (a whole number, :class:`~lenet.reader.Reader`), ``GET /api/health``, ``GET /api/model`` and FastAPI's ``/docs`` + ``/openapi.json``.
Request bodies are size-limited before they are read whole, client bytes only ever reach
Pillow through ``lenet.preprocess.load_image`` (nothing is unpickled), and every error is JSON.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest

from lenet._version import __version__
from lenet.batcher import Batcher, ClientGone, ServerBusy
from lenet.errors import LenetError
from lenet.httpguard import LOOPBACK_HOSTS, HostAllowList, RequestLog, escape, escape_path
from lenet.predictor import NONFINITE, png_base64

try:  # several times faster than json.dumps on the answer's float lists
    from orjson import dumps as _dumps
except ImportError:  # pragma: no cover - orjson is in the 'serve' extra
    import json

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj).encode()


if TYPE_CHECKING:
    from collections.abc import Iterable

    from lenet.predictor import Prediction, Predictor

log = logging.getLogger("lenet.server")

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_BYTES = 5_000_000
# The service's own pixel cap (the CLI allows 64 MP): a 4000x4000 photo fits, a bomb does not.
DEFAULT_MAX_PIXELS = 16_000_000
DEFAULT_QUEUE = 64  # requests waiting per worker process beyond the batch being computed
DEFAULT_MAX_BATCH = 16  # requests per network call
DEFAULT_READ_TIMEOUT = 10.0  # seconds for the request head, then for the body
RETRY_AFTER_S = 1  # what a 503 tells the client to wait
BUSY = "server busy: too many requests are waiting, try again"
# Content types accepted as a raw image body (besides multipart/form-data with a ``file`` part).
RAW_TYPES = ("image/", "application/octet-stream")
# Only the drawing page gets this policy: everything it loads comes from this server.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status (never a traceback)."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close or status in (408, 413)  # the rest of the body is not read


async def read_body_limited(
    request: Request, max_bytes: int, timeout: float = DEFAULT_READ_TIMEOUT
) -> bytes:
    """The request body, or 413 as soon as it is known to exceed ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before a byte is read; a body
    without one (chunked) is counted while it streams in and refused the moment it crosses.
    A body not complete within ``timeout`` seconds is refused with 408 (a slow client must not
    hold a connection and its buffer forever).
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        if n > max_bytes:
            raise ApiError(413, f"request body of {n:,} bytes is over the {max_bytes:,}-byte limit")
    chunks: list[bytes] = []
    total = 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                total += len(chunk)
                if total > max_bytes:
                    raise ApiError(413, f"request body is over the {max_bytes:,}-byte limit")
                chunks.append(chunk)
    except ClientDisconnect:  # the client went away mid-upload: nobody to answer, not a bug
        raise ApiError(400, "client disconnected before the body was complete") from None
    except TimeoutError:
        raise ApiError(
            408, f"request body not received within {timeout:g} s ({total:,} bytes arrived)"
        ) from None
    return b"".join(chunks)


async def image_bytes_from_request(
    request: Request, max_bytes: int, timeout: float = DEFAULT_READ_TIMEOUT
) -> bytes:
    """The uploaded image: the ``file`` part of a multipart form, or a raw ``image/*`` body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data" and not ctype.startswith(RAW_TYPES):
        raise ApiError(
            415,
            "send the image as multipart/form-data with a 'file' field, or as the raw body "
            f"with an image/* Content-Type (got {ctype or 'no Content-Type'!r})",
        )
    body = await read_body_limited(request, max_bytes, timeout)
    if ctype != "multipart/form-data":
        if not body:
            raise ApiError(400, "empty request body: send an image")
        return body

    # Parse the already size-checked body from memory (Starlette's parser, python-multipart).
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form_request = StarletteRequest(request.scope, replay)
    try:
        async with form_request.form(max_files=1, max_fields=20) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "multipart body has no file field named 'file'")
            data = await upload.read()
    except StarletteHTTPException as e:  # malformed multipart
        raise ApiError(400, f"bad multipart body: {e.detail}") from None
    if not data:
        raise ApiError(400, "the uploaded file is empty")
    return data


def _finite(x: Any) -> float | None:
    """JSON has no NaN/inf: such a value becomes null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def prediction_json(p: Prediction, model: str, elapsed_ms: float) -> dict:
    """The ``/api/predict`` answer for one successful :class:`Prediction`."""
    return {
        "digit": None if p.digit is None else int(p.digit),
        "confidence": _finite(p.confidence),
        "probabilities": None if p.probabilities is None else [_finite(v) for v in p.probabilities],
        "top_k": [[int(d), _finite(q)] for d, q in (p.top_k or [])],
        "reason": p.reason,
        "preprocessed_png_base64": None if p.preprocessed is None else png_base64(p.preprocessed),
        "model": model,
        "elapsed_ms": round(elapsed_ms, 2),
    }


def reading_json(r, model: str, elapsed_ms: float) -> dict:
    """The ``/api/read`` answer for one successful :class:`~lenet.reader.Reading`."""
    d = r.to_dict()
    d.pop("path", None)
    for c in d["characters"]:
        c["confidence"] = _finite(c["confidence"])
        c["top_k"] = [[int(k), _finite(q)] for k, q in c["top_k"]]
    d["confidence"] = _finite(d["confidence"])
    d.setdefault("reason", None)
    d["model"] = model
    d["elapsed_ms"] = round(elapsed_ms, 2)
    return d


def model_json(predictor: Predictor) -> dict:
    """``/api/model``: the predictor's info, with the checkpoint path reduced to its file name."""
    info = dict(getattr(predictor, "info", {}) or {})
    if info.get("path"):
        info["path"] = Path(str(info["path"])).name  # don't reveal the server's file layout
    info.setdefault("name", predictor.name)
    norm = getattr(predictor, "normalization", None)
    if norm is not None and hasattr(norm, "to_dict"):
        info.setdefault("normalization", norm.to_dict())
    return info


async def _disconnected(request: Request) -> None:
    """Return when the client has gone away (after the body, ASGI's receive says only that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


GONE = object()  # what queued() returns when the client left before its job ran

# The OpenAPI description of an image upload (/api/predict and /api/read take the same).
IMAGE_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def create_app(
    predictor: Predictor,
    max_bytes: int = DEFAULT_MAX_BYTES,
    top_k: int = 3,
    min_confidence: float | None = None,
    queue: int = DEFAULT_QUEUE,
    max_batch: int = DEFAULT_MAX_BATCH,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    static_dir: str | os.PathLike | None = None,
    allowed_hosts: Iterable[str] = LOOPBACK_HOSTS,
) -> FastAPI:
    """The service around one loaded predictor.

    ``max_bytes`` caps every request body; ``top_k``/``min_confidence`` are the defaults a
    request can override with query parameters. Predictions go through a
    :class:`~lenet.batcher.Batcher`: at most ``queue`` requests wait (more answer 503 with
    ``Retry-After``), up to ``max_batch`` share one network call. A body not received within
    ``read_timeout`` seconds answers 408. Images over ``max_pixels`` (the service's cap, below
    the predictor's own) answer 400 before they are decoded. ``allowed_hosts`` are the names a
    request's Host header may carry (port ignored; ``"*"``: any); the rest get 400 (DNS rebinding, see lenet.httpguard).
    """
    from lenet.preprocess import quiet_bomb_warning

    quiet_bomb_warning()  # images over the cap get their one JSON error line instead
    if max_bytes <= 0 or read_timeout <= 0:
        raise ValueError("max_bytes and read_timeout must be positive")
    static = Path(static_dir) if static_dir else STATIC_DIR
    batcher = Batcher(predictor, queue=queue, max_batch=max_batch, max_pixels=max_pixels)
    started = time.time()

    app = FastAPI(
        title="lenet",
        version=__version__,
        summary="Handwritten-digit recognition with the LeNet family",
        description="Draw a digit at `/`, or POST an image to `/api/predict`.",
    )
    app.state.predictor = predictor
    app.state.max_bytes = max_bytes
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"Connection": "close"} if exc.close else {}
        if exc.status == 503:
            headers["Retry-After"] = str(RETRY_AFTER_S)
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("query", "body"))
        msg = f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid")
        return JSONResponse({"error": msg}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception(
            "internal error on %s %s", escape(request.method), escape_path(request.url.path)
        )
        return JSONResponse({"error": "internal server error"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(
            static / "index.html",
            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
        )

    @app.get("/api/health", summary="Liveness: the model is loaded and the server answers")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": predictor.name,
            "version": __version__,
            "uptime_s": round(time.time() - started, 1),
        }

    @app.get("/api/model", summary="The loaded model: name, parameters, test accuracy, sha256")
    async def model() -> dict:
        return {
            **model_json(predictor),
            "max_bytes": max_bytes,
            "max_pixels": min(max_pixels, getattr(predictor, "max_pixels", max_pixels)),
            "queue": queue,
            "max_batch": max_batch,
            "read_timeout_s": read_timeout,
        }

    async def body(request: Request) -> bytes:
        """The request's image bytes; 503 at once, before reading (and holding) a body that
        would not be queued."""
        if batcher.full:
            request.state.log_extra = f"busy waiting={batcher.waiting}"
            raise ApiError(503, BUSY, close=True)
        batcher.reading += 1
        try:
            return await image_bytes_from_request(request, max_bytes, read_timeout)
        finally:
            batcher.reading -= 1  # from here on it is counted in the queue itself

    async def queued(request: Request, job):
        """Await a queued job: its result, a 503 when the queue is full, or GONE when the
        client left first (the job was skipped; 499 only reaches the log)."""
        try:
            return await job
        except ServerBusy:
            request.state.log_extra = f"busy waiting={batcher.waiting}"
            raise ApiError(503, BUSY) from None
        except ClientGone:
            request.state.log_extra = "client gone, not computed"
            return GONE

    @app.post(
        "/api/predict",
        summary="Recognise the digit in an image",
        description=(
            "Send an image (PNG, JPEG, BMP, GIF, TIFF, WebP: a photo, a scan or a canvas "
            "export) as multipart/form-data field `file`, or as the raw body with an `image/*` "
            "Content-Type. It goes through the same MNIST-style preprocessing as `lenet "
            "predict`. A blank image answers 200 with `digit: null` and a `reason`; a body over "
            "the size limit answers 413; something that is not a usable image answers 400."
        ),
        openapi_extra=IMAGE_REQUEST_BODY,
    )
    async def predict(
        request: Request,
        top_k_: int = Query(top_k, alias="top_k", ge=1, le=10, description="classes in top_k"),
        min_confidence_: float | None = Query(
            min_confidence,
            alias="min_confidence",
            ge=0.0,
            le=1.0,
            description='below this confidence answer digit null, reason "unsure"',
        ),
    ) -> Response:
        t0 = time.perf_counter()
        data = await body(request)
        try:
            p = await queued(
                request,
                batcher.predict(
                    data, top_k_, min_confidence_, disconnected=lambda: _disconnected(request)
                ),
            )
        except LenetError as e:  # the predictor reports per-input errors in .error; be safe
            raise ApiError(400, str(e)) from None
        if p is GONE:
            return Response(status_code=499)
        if p.error:
            request.state.log_extra = f"error={p.error[:80]!r}"
            if p.error.startswith("internal error"):  # the Predictor caught a bug, not bad input
                log.error("prediction failed: %s", p.error)
                raise ApiError(500, "internal server error")
            if p.error == NONFINITE:  # the model failed on a good image: no 500, no fake digit
                log.error("prediction failed: %s", p.error)
                raise ApiError(422, p.error)
            raise ApiError(400, p.error)
        out = prediction_json(p, predictor.name, 1000 * (time.perf_counter() - t0))
        conf = out["confidence"]
        request.state.log_extra = (
            f"digit={out['digit']} p={conf:.3f}"
            if out["digit"] is not None and conf is not None
            else f"digit={out['digit']} reason={p.reason!r}"
        )
        return Response(_dumps(out), media_type="application/json")

    @app.post(
        "/api/read",
        summary="Read a whole number (several digits) in an image",
        description=(
            "Send an image as for `/api/predict`. The answer is the string read (`text`), one "
            "entry per character with its `box` [x0, y0, x1, y1] in the image's pixels, its "
            "digit, confidence and top_k, and the string's `confidence`. `digits` or `pattern` "
            "constrain the reading; characters below `min_confidence` read `?` and the answer "
            "is `unsure`. No digits: 200 with `text: null` and a `reason`."
        ),
        openapi_extra=IMAGE_REQUEST_BODY,
    )
    async def read(
        request: Request,
        top_k_: int = Query(top_k, alias="top_k", ge=1, le=10, description="classes in top_k"),
        min_confidence_: float | None = Query(
            min_confidence,
            alias="min_confidence",
            ge=0.0,
            le=1.0,
            description='characters below this confidence read "?"',
        ),
        digits: int | None = Query(None, ge=1, le=64, description="exactly this many digits"),
        pattern: str | None = Query(
            None, max_length=200, description="a regular expression the whole string matches"
        ),
    ) -> Response:
        from lenet.reader import Reader, check_constraint

        t0 = time.perf_counter()
        try:
            check_constraint(digits, pattern)
        except LenetError as e:
            raise ApiError(422, str(e)) from None
        data = await body(request)
        reader = Reader(predictor=predictor)  # three attributes: the predictor is shared

        def work():
            return reader.read_one(
                data,
                digits=digits,
                pattern=pattern,
                min_confidence=min_confidence_,
                top_k=top_k_,
                max_pixels=max_pixels,
            )

        r = await queued(request, batcher.call(work, disconnected=lambda: _disconnected(request)))
        if r is GONE:
            return Response(status_code=499)
        if r.error:
            request.state.log_extra = f"error={r.error[:80]!r}"
            raise ApiError(400, r.error)
        out = reading_json(r, predictor.name, 1000 * (time.perf_counter() - t0))
        request.state.log_extra = f"text={out['text']!r}"
        return Response(_dumps(out), media_type="application/json")

    app.mount("/static", StaticFiles(directory=static), name="static")
    app.add_middleware(HostAllowList, allowed_hosts=tuple(allowed_hosts))
    app.add_middleware(RequestLog)  # added last = outermost: refused hosts are logged too
    return app


def freeze_heap() -> None:
    """Move everything allocated so far (torch, FastAPI, the model) out of the GC's sight.

    Measured: without it a full collection in a serving process walks that whole start-up heap
    and stalls every request in flight for 160-680 ms (p99 of a concurrency-16 run); after it,
    11-15 ms. Call once per process, after the model and the app are built.
    """
    import gc

    gc.collect()
    gc.freeze()


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (each ``--workers`` process loads the model once)."""
    import torch

    from lenet.predictor import Predictor

    if not logging.getLogger().handlers:  # a fresh worker process: log like the CLI does
        logging.basicConfig(level=logging.INFO, format="lenet: %(message)s")
    torch.set_num_threads(int(os.environ.get("LENET_SERVE_THREADS", 1)))
    checkpoint = os.environ.get("LENET_SERVE_MODEL") or None
    predictor = Predictor(
        checkpoint,
        device=os.environ.get("LENET_SERVE_DEVICE", "cpu"),
        backend=os.environ.get("LENET_SERVE_BACKEND", "torch"),
    )
    min_conf = os.environ.get("LENET_SERVE_MIN_CONFIDENCE")
    app = create_app(
        predictor,
        max_bytes=int(os.environ.get("LENET_SERVE_MAX_BYTES", DEFAULT_MAX_BYTES)),
        top_k=int(os.environ.get("LENET_SERVE_TOP_K", 3)),
        min_confidence=float(min_conf) if min_conf else None,
        max_pixels=int(os.environ.get("LENET_SERVE_MAX_PIXELS", DEFAULT_MAX_PIXELS)),
        allowed_hosts=(
            os.environ.get("LENET_SERVE_ALLOWED_HOSTS") or ",".join(LOOPBACK_HOSTS)
        ).split(","),
        queue=int(os.environ.get("LENET_SERVE_QUEUE", DEFAULT_QUEUE)),
        read_timeout=float(os.environ.get("LENET_SERVE_READ_TIMEOUT", DEFAULT_READ_TIMEOUT)),
    )
    freeze_heap()
    return app
