"""Predict digits in outside images: load a model once, preprocess, batch, answer per input."""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from lenet.checkpoint import load_model
from lenet.config import BACKENDS
from lenet.errors import LenetError
from lenet.models import count_parameters
from lenet.normalization import normalize
from lenet.ops import prepare_for_device
from lenet.parallel import CHUNK, Outcome, Prepared, PreprocessPool, prepare_one
from lenet.preprocess import MAX_PIXELS
from lenet.runtime import resolve_device

log = logging.getLogger(__name__)

BUNDLED_NAME = "lenet5-ensemble.pt"
UNSURE = "unsure"
# The error of an input the network answered with NaN/inf (broken weights, an overflow): the
# model's failure, not the input's, so the service answers it apart from bad images.
NONFINITE = "the model's output for this image is not a number (NaN or inf); no answer"


def bundled_checkpoint() -> Path:
    """Path of the pretrained checkpoint shipped inside the package (``lenet/weights``)."""
    path = Path(str(resources.files("lenet") / "weights" / BUNDLED_NAME))
    if not path.is_file():
        raise LenetError(f"bundled weights missing ({path}); reinstall lenet or pass --model")
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_source(source) -> str:
    """A short name for an input, used as ``path`` in results."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, np.ndarray):
        return f"<array {'x'.join(map(str, source.shape))}>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    name = getattr(source, "filename", None) or getattr(source, "name", None)
    if isinstance(name, str) and name:
        return name
    return f"<{type(source).__name__}>"


@dataclass
class Prediction:
    """The answer for one input: a digit with its probabilities, or why there is none."""

    source: str
    digit: int | None = None
    confidence: float | None = None
    probabilities: list[float] | None = None
    top_k: list[list] = field(default_factory=list)  # [[digit, probability], ...] best first
    reason: str | None = None  # "no digit found" or "unsure" when digit is None but input was fine
    preprocessed: np.ndarray | None = None  # uint8 (28, 28): what the network saw
    error: str | None = None  # the input could not be used (not an image, truncated, ...)

    @property
    def ok(self) -> bool:
        """True unless the input itself was unusable."""
        return self.error is None

    def to_dict(self, include_image: bool = False) -> dict:
        """JSON-ready dict: path, digit, confidence, probabilities, top_k (+ reason / error).

        ``include_image`` adds ``preprocessed_png_base64`` (the 28x28 as a PNG) when available.
        """
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        d = {
            "path": self.source,
            "digit": self.digit,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "top_k": self.top_k,
        }
        if self.reason is not None:
            d["reason"] = self.reason
        if include_image:
            d["preprocessed_png_base64"] = (
                png_base64(self.preprocessed) if self.preprocessed is not None else None
            )
        return d


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W) -> PNG file bytes (OpenCV's encoder: 22 us for a 28x28 here, Pillow's 55)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image, dtype=np.uint8))
    if not ok:
        raise LenetError("could not encode the image as PNG")
    return buf.tobytes()


def png_base64(image: np.ndarray) -> str:
    """uint8 (H, W) -> base64 text of its PNG."""
    import base64

    return base64.b64encode(png_bytes(image)).decode("ascii")


def _check_options(top_k: int, min_confidence: float | None) -> None:
    if not 1 <= top_k <= 10:
        raise LenetError("top_k must be between 1 and 10")
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise LenetError("min_confidence must be between 0 and 1")


def _is_single(inputs) -> bool:
    """One input rather than a collection (a file-like is one image, though it iterates lines)."""
    single = (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Image.Image)
    return isinstance(inputs, single) or hasattr(inputs, "read") or not hasattr(inputs, "__iter__")


def _prediction(source, outcome: Outcome) -> Prediction:
    image, reason, error = outcome
    return Prediction(describe_source(source), preprocessed=image, reason=reason, error=error)


def _batches(inputs: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for x in inputs:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Predictor:
    """A model loaded once, answering digit predictions for outside images (CLI, service, API).

    ``Predictor()`` uses the pretrained weights bundled with the package; ``checkpoint`` may be
    any checkpoint ``lenet eval`` reads. ``backend`` (one of ``lenet.config.BACKENDS``): "torch"
    runs the checkpoint's model in PyTorch, "onnx" the same weights exported to ONNX Runtime.
    ``workers`` > 1 processes decode and preprocess lists of inputs (:mod:`lenet.parallel`;
    they are spawned, so a script needs the usual ``if __name__ == "__main__":`` guard), or
    ``pool``, one already started; default: everything in the calling process. ``max_pixels``
    refuses larger images from their header, before decoding.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        batch_size: int = 256,
        backend: str = "torch",
        workers: int | None = None,
        max_pixels: int = MAX_PIXELS,
        pool: PreprocessPool | None = None,
    ):
        if backend not in BACKENDS:
            raise LenetError(f"backend must be one of {', '.join(BACKENDS)}")
        if batch_size < 1 or (workers is not None and workers < 1) or max_pixels < 1:
            raise LenetError("batch_size, workers and max_pixels must be at least 1")
        path = Path(checkpoint) if checkpoint is not None else bundled_checkpoint()
        self.device = resolve_device(device) if backend == "torch" else torch.device("cpu")
        lm = load_model(path, self.device)
        self.backend = backend
        self._onnx = None
        if backend == "onnx":
            # Export once into a private temp folder and run it in ONNX Runtime (CPU); the
            # normalization below stays the checkpoint's, so inputs are fed exactly as to torch.
            import tempfile

            from lenet.export import OnnxRunner, export_onnx

            self._onnx_dir = tempfile.TemporaryDirectory(prefix="lenet-onnx-")
            self._onnx = OnnxRunner(export_onnx(path, Path(self._onnx_dir.name) / "model.onnx"))
        # Same math, faster on CPU: channels-last, GEMM c5, fused conv blocks (lenet.ops).
        self.model = prepare_for_device(lm.model, self.device) if backend == "torch" else lm.model
        self.name = lm.name
        self.normalization = lm.normalization
        self.path = lm.path
        self.batch_size = batch_size
        self.workers = workers  # preprocessing processes (None or 1: none)
        self.max_pixels = max_pixels  # inputs larger than this are refused before decoding
        self._pool = pool
        self._own_pool = False
        metrics = lm.checkpoint.get("metrics") or {}
        acc = metrics.get("test_accuracy")
        if acc is None and (lm.checkpoint.get("train_config") or {}).get("select_on") == "test":
            acc = metrics.get("val_acc")  # the note recipe selects on (and reports) the test set
        self.info = {
            "model": self.name,
            "parameters": count_parameters(self.model),
            "classes": int(lm.config.get("num_classes", 10)),
            "test_accuracy": acc,
            "checkpoint_sha256": sha256_file(path),
            "path": str(path),
            "bundled": checkpoint is None,
            "backend": backend,
            "normalization": self.normalization.to_dict(),
        }
        log.info("loaded %s from %s", self.name, path)

    def __repr__(self) -> str:
        return f"Predictor({self.name!r}, {str(self.path)!r}, backend={self.backend!r})"

    def predict_one(
        self, source, top_k: int = 3, min_confidence: float | None = None
    ) -> Prediction:
        """:meth:`predict` for a single input (preprocessed in the calling thread)."""
        _check_options(top_k, min_confidence)
        return self.classify([self.prepare(source)], top_k, min_confidence)[0]

    def predict(
        self, inputs, top_k: int = 3, min_confidence: float | None = None
    ) -> list[Prediction]:
        """One :class:`Prediction` per input, in order; the network runs in batches.

        ``inputs``: an iterable of paths, bytes, file-likes, PIL images or numpy arrays (a single
        one of these is accepted too). Unusable inputs get ``error``; blank ones ``reason="no
        digit found"``; answers below ``min_confidence`` get ``digit=None, reason="unsure"``.
        With ``workers`` > 1, inputs are decoded and preprocessed in worker processes.
        """
        return list(self.predict_iter(inputs, top_k=top_k, min_confidence=min_confidence))

    def predict_iter(
        self, inputs, top_k: int = 3, min_confidence: float | None = None
    ) -> Iterator[Prediction]:
        """:meth:`predict` as a stream: answers come out in input order, chunk by chunk.

        With worker processes (``workers`` > 1, or ``inputs`` already a
        :class:`lenet.parallel.Prepared` stream from :meth:`PreprocessPool.imap`), inputs are
        decoded and preprocessed there while this process runs the network on the chunks that
        are done; otherwise each batch is preprocessed here, then classified.
        """
        _check_options(top_k, min_confidence)
        if _is_single(inputs):
            inputs = [inputs]
        one = hasattr(inputs, "__len__") and len(inputs) <= 1  # not worth a process
        pool = None if isinstance(inputs, Prepared) or one else self._pool_for()
        if pool is not None:
            inputs = pool.imap(inputs)
        if isinstance(inputs, Prepared):
            pairs = (_prediction(s, outcome) for s, outcome in inputs)
            try:
                for batch in _batches(pairs, CHUNK):
                    yield from self.classify(batch, top_k, min_confidence)
            finally:  # the caller stopped early (Ctrl-C, break): drop work nobody will read
                inputs.cancel()
            return
        for batch in _batches(inputs, self.batch_size):
            yield from self.classify([self.prepare(s) for s in batch], top_k, min_confidence)

    def _pool_for(self) -> PreprocessPool | None:
        """The worker pool, started on first need (None: preprocess in this process)."""
        if self._pool is None and (self.workers or 1) > 1:
            self._pool = PreprocessPool(self.workers, self.max_pixels)
            self._own_pool = True
            # Stopped when the predictor goes away (or at exit), if close() was not called.
            self._finalizer = weakref.finalize(self, self._pool.close, True)
        return self._pool

    def prepare(self, source, max_pixels: int | None = None) -> Prediction:
        """Decode and preprocess one input, without the network: a :class:`Prediction` with
        ``preprocessed`` set, or with ``reason`` (no digit) or ``error`` (unusable input).

        ``max_pixels`` lowers the predictor's own cap for this input (the service's cap)."""
        cap = self.max_pixels if max_pixels is None else min(max_pixels, self.max_pixels)
        return _prediction(source, prepare_one(source, cap))

    def classify(
        self, preds: list[Prediction], top_k: int = 3, min_confidence: float | None = None
    ) -> list[Prediction]:
        """Run the network on every prepared prediction (in batches) and fill in its answer.

        Predictions without a preprocessed image (errors, no digit) are left as they are; the
        same list is returned.
        """
        ready = [p for p in preds if p.preprocessed is not None and p.error is None]
        for i in range(0, len(ready), self.batch_size):
            batch = ready[i : i + self.batch_size]
            probs = self.probabilities(np.stack([p.preprocessed for p in batch]))
            for pred, p in zip(batch, probs, strict=True):
                self._fill(pred, p, top_k, min_confidence)
        return preds

    def close(self) -> None:
        """Stop the preprocessing processes this predictor started (restarted when needed)."""
        if self._pool is not None and self._own_pool:
            self._finalizer()  # closes the pool, once
            self._pool = None
            self._own_pool = False

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities (N, 10) for preprocessed uint8 images (N, 28, 28)."""
        x = normalize(torch.from_numpy(np.ascontiguousarray(images)), self.normalization)
        if self._onnx is not None:
            logits = torch.from_numpy(self._onnx(x))
        else:
            with torch.no_grad():
                logits = self.model(x.to(self.device)).float()
        return torch.softmax(logits, dim=1).cpu().numpy().astype(np.float64)

    @staticmethod
    def _fill(pred: Prediction, p: np.ndarray, top_k: int, min_confidence: float | None) -> None:
        if not np.isfinite(p).all():  # argsort would call it digit 0 at nan% confidence
            pred.error = NONFINITE
            return
        order = np.argsort(-p, kind="stable")[:top_k]
        pred.probabilities = [round(float(v), 6) for v in p]
        pred.top_k = [[int(d), round(float(p[d]), 6)] for d in order]
        pred.confidence = round(float(p[order[0]]), 6)
        if min_confidence is not None and pred.confidence < min_confidence:
            pred.reason = UNSURE
        else:
            pred.digit = int(order[0])
