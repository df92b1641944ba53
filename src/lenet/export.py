"""Export a checkpoint to ONNX or TorchScript, and run an exported ONNX model with ONNX Runtime.

Both formats take *normalized* float32 inputs of shape (N, 1, 28, 28) with a dynamic batch N and
return logits (N, classes). The normalization is not baked into the graph: it is recorded in the
file's metadata (ONNX ``metadata_props`` / a TorchScript extra file ``lenet.json``), so every
caller applies the one definition from :mod:`lenet.normalization` (``(pixel/255 - mean) / std``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from lenet._version import __version__
from lenet.checkpoint import load_model
from lenet.errors import LenetError
from lenet.fileio import atomic_write, atomic_write_bytes
from lenet.normalization import Normalization, normalize

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
EXPORTERS = ("auto", "dynamo", "legacy")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT_NAME, OUTPUT_NAME = "input", "logits"
IMAGE_SHAPE = (1, 28, 28)
DEFAULT_OPSET = 18  # onnxruntime >= 1.14 runs it; the dynamo exporter's lowest well-tested opset
METADATA_KEY = "lenet"  # one JSON value, so the ONNX and TorchScript files carry the same record


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise LenetError(
            f"{module} is not installed; install the ONNX extra: pip install 'lenet[onnx]'"
        ) from None


def default_output(checkpoint: str | os.PathLike, fmt: str) -> Path:
    """``runs/x/best.pt`` -> ``runs/x/best.onnx`` or ``runs/x/best.torchscript.pt``."""
    p = Path(checkpoint)
    return p.with_name(p.stem + SUFFIX[fmt])


def export_metadata(lm) -> dict:
    """What a caller needs besides the graph: model identity, input contract, normalization."""
    return {
        "model": lm.name,
        "model_config": lm.config,
        "normalization": lm.normalization.to_dict(),
        "input": {
            "name": INPUT_NAME,
            "shape": ["N", *IMAGE_SHAPE],
            "dtype": "float32",
            "scaling": "(pixel / 255 - mean) / std, mean/std from 'normalization'",
        },
        "output": {"name": OUTPUT_NAME, "shape": ["N", "classes"], "meaning": "logits"},
        "lenet_version": __version__,
        "source_checkpoint": str(lm.path),
        "epoch": lm.checkpoint.get("epoch"),
    }


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters warn about things that are not the user's business (deprecations, absent
    torchvision ops); keep them out of the CLI's output."""
    loggers = [
        logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def _onnx_bytes(model: torch.nn.Module, opset: int, exporter: str) -> tuple[bytes, str]:
    """Serialize ``model`` to ONNX with a dynamic batch dimension; returns (bytes, exporter)."""
    example = torch.zeros(2, *IMAGE_SHAPE)
    if exporter == "auto":
        try:
            import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)

            exporter = "dynamo"
        except ImportError:
            exporter = "legacy"
    with _quiet_exporter():
        if exporter == "dynamo":
            prog = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
            return prog.model_proto.SerializeToString(), exporter
        buf = io.BytesIO()
        torch.onnx.export(
            model,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        return buf.getvalue(), exporter


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
) -> Path:
    """Write ``checkpoint`` as an ONNX model (input ``input`` (N,1,28,28) float32 normalized,
    output ``logits``) with the normalization in its metadata; returns the path written.

    ``exporter``: ``dynamo`` (torch.export-based, needs onnxscript), ``legacy`` (TorchScript-based,
    deprecated upstream) or ``auto`` (dynamo when onnxscript is installed).
    """
    if exporter not in EXPORTERS:
        raise LenetError(f"--exporter must be one of {', '.join(EXPORTERS)}")
    onnx = _need("onnx")
    lm = load_model(checkpoint, "cpu")
    out = Path(out) if out is not None else default_output(checkpoint, "onnx")
    data, used = _onnx_bytes(lm.model, opset, exporter)
    proto = onnx.load_from_string(data)
    meta = {**export_metadata(lm), "exporter": used, "opset": opset}
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name, proto.doc_string = "lenet", f"{lm.name} from {lm.path.name}"
    onnx.checker.check_model(proto)
    atomic_write_bytes(out, proto.SerializeToString())
    log.info("exported %s to %s (ONNX opset %d, %s exporter)", lm.path, out, opset, used)
    return out


def export_torchscript(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``checkpoint`` as a traced TorchScript module (same input/output contract as ONNX,
    metadata in the extra file ``lenet.json``); returns the path written."""
    lm = load_model(checkpoint, "cpu")
    out = Path(out) if out is not None else default_output(checkpoint, "torchscript")
    with _quiet_exporter(), torch.no_grad():
        # Tracing records the layer calls; LeNet models have no data-dependent control flow,
        # and nothing in them depends on the batch size, so the batch stays dynamic.
        traced = torch.jit.trace(lm.model, torch.zeros(2, *IMAGE_SHAPE))
    extra = {f"{METADATA_KEY}.json": json.dumps(export_metadata(lm))}
    with _quiet_exporter():
        atomic_write(out, lambda tmp: torch.jit.save(traced, tmp, _extra_files=extra))
    log.info("exported %s to %s (TorchScript)", lm.path, out)
    return out


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict]:
    """Load an exported TorchScript file (CPU) and its ``lenet`` metadata.

    TorchScript archives contain code: load only files you exported yourself.
    """
    extra = {f"{METADATA_KEY}.json": ""}
    with _quiet_exporter():
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module.eval(), json.loads(extra[f"{METADATA_KEY}.json"] or "{}")


class OnnxRunner:
    """An exported ONNX model in an ONNX Runtime session: logits for normalized batches.

    ``runner(x)`` takes float32 (N, 1, 28, 28) already normalized (numpy or torch) and returns
    numpy logits (N, classes); :meth:`logits_for_images` takes uint8 (N, 28, 28) pixels and
    applies the normalization recorded in the file.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 0):
        ort = _need("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise LenetError(f"{self.path}: no such ONNX file")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise LenetError(f"{self.path}: not a loadable ONNX model ({first[:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata: dict = json.loads(meta) if meta else {}
        self.normalization = Normalization.from_dict(self.metadata.get("normalization"))
        self.input_name = self.session.get_inputs()[0].name

    def __repr__(self) -> str:
        return f"OnnxRunner({str(self.path)!r}, model={self.metadata.get('model')!r})"

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits (N, classes) for normalized float32 inputs (N, 1, 28, 28)."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]

    def logits_for_images(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits for uint8 pixel images (N, 28, 28), normalized as the model was trained."""
        t = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
        return self(normalize(t, self.normalization))


def check_export(
    checkpoint: str | os.PathLike, exported: str | os.PathLike, fmt: str, n: int = 64
) -> float:
    """Max absolute logit difference between an exported file and the checkpoint in PyTorch, on
    ``n`` random normalized inputs (a quick sanity check after export)."""
    lm = load_model(checkpoint, "cpu")
    x = torch.randn(n, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = lm.model(x).numpy()
        if fmt == "onnx":
            got = OnnxRunner(exported)(x)
        else:
            got = load_torchscript(exported)[0](x).numpy()
    return float(np.abs(got - ref).max())
