"""Checkpoints: plain-typed dicts written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import math
import os
import platform
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lenet._version import __version__
from lenet.errors import CheckpointError, LenetError
from lenet.fileio import atomic_write
from lenet.models import create_model, get_spec, model_config
from lenet.normalization import Normalization

FORMAT_VERSION = 1


def versions() -> dict:
    """Library versions recorded in every checkpoint."""
    return {
        "lenet": __version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }


def output_dir_for(checkpoint: str | os.PathLike) -> Path:
    """Where pictures about a checkpoint go by default: its own run folder, or the current
    folder for the weights shipped inside the package (never write into site-packages)."""
    folder = Path(checkpoint).resolve().parent
    package = Path(__file__).resolve().parent
    return Path(".") if folder == package or package in folder.parents else Path(checkpoint).parent


def clean_state_dict(state_dict: dict) -> dict:
    """Strip wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile)."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write a checkpoint dict atomically (temp file + rename); adds format and library versions."""
    payload = {"format_version": FORMAT_VERSION, "versions": versions(), **payload}
    if "state_dict" in payload:
        payload["state_dict"] = clean_state_dict(payload["state_dict"])
    try:
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except (OSError, RuntimeError) as e:  # a full disk, a file size limit, a vanished folder
        # torch.save reports a failed write as a RuntimeError; atomic_write removed the temp file.
        raise CheckpointError(
            f"could not write {path} ({_first_line(e)}); the {Path(path).name} that was there "
            "is untouched (a full disk? free space, then --resume from last.pt)"
        ) from None


def make_payload(
    model: nn.Module,
    model_name: str,
    model_cfg: dict,
    normalization: Normalization,
    **extra,
) -> dict:
    """The plain-typed dict every checkpoint holds (model identity, weights, input scaling, extras)."""
    return {
        "model": {"name": model_name, "config": dict(model_cfg)},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "normalization": normalization.to_dict(),
        **extra,
    }


def _check_container(path: Path) -> None:
    """Refuse a damaged file before torch reads it: torch's zip reader does not check the CRC-32
    each member carries, so a flipped bit in the weights would load as other weights."""
    with path.open("rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # not torch's zip format: torch.load itself decides
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # reads every member, checks its CRC-32
    except Exception as e:  # BadZipFile, struct/value errors from damaged headers, ...
        raise CheckpointError(f"{path}: damaged checkpoint file ({_first_line(e)})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged checkpoint file (checksum mismatch in {bad})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _check_layout(path: Path, obj: dict) -> None:
    """One clear error for a checkpoint dict whose parts have the wrong types (never a traceback
    later, where they are used)."""
    version = obj.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: format_version is {version!r}, not a number")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this lenet "
            f"understands ({FORMAT_VERSION}); upgrade lenet"
        )
    model = obj["model"]
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise CheckpointError(f"{path}: 'model' is not a {{name, config}} record")
    if not isinstance(model.get("config") or {}, dict):
        raise CheckpointError(f"{path}: the model config is not a dict")
    sd = obj["state_dict"]
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise CheckpointError(f"{path}: 'state_dict' is not a dict of named tensors")
    norm = obj.get("normalization")
    if norm is not None:
        ok = isinstance(norm, dict) and set(norm) <= {"mean", "std"}
        values = list(norm.values()) if ok else []
        ok = ok and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )
        if not ok or (norm.get("std", 1.0) <= 0):
            raise CheckpointError(
                f"{path}: normalization {norm!r} is not {{mean, std}} with finite numbers, std > 0"
            )


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint (ours or a bare note-style ``state_dict``) safely, as a plain dict."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (e.g. {path}/best.pt)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    _check_container(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt/unsafe files
        raise CheckpointError(f"{path}: not a loadable checkpoint ({_first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (found {type(obj).__name__})")
    if "state_dict" in obj and "model" in obj:
        _check_layout(path, obj)
        return obj
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if not all(isinstance(k, str) for k in obj):
            raise CheckpointError(f"{path}: not a lenet checkpoint or a model state_dict")
        return _wrap_bare_state_dict(path, clean_state_dict(obj))
    raise CheckpointError(f"{path}: not a lenet checkpoint or a model state_dict")


def _wrap_bare_state_dict(path: Path, state_dict: dict) -> dict:
    """A note-style ``torch.save(model.state_dict())`` file -> our dict, recognised by its keys."""
    seed_keys = {f"{m}.{p}" for m in ("c1", "c3", "c5", "f6", "output") for p in ("weight", "bias")}
    if set(state_dict) != seed_keys:
        raise CheckpointError(
            f"{path}: a bare state_dict that is not the study note's LeNet-5 "
            "(only lenet checkpoints carry their model name)"
        )
    num_classes = int(state_dict["output.weight"].shape[0])
    # The note trains on ToTensor() inputs: pixels in [0, 1].
    return {
        "format_version": 0,
        "model": {"name": "lenet5", "config": model_config("lenet5", num_classes=num_classes)},
        "state_dict": state_dict,
        "normalization": Normalization(0.0, 1.0).to_dict(),
        "epoch": None,
        "metrics": {},
    }


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, in eval mode, with what is needed to feed it."""

    model: nn.Module
    name: str
    config: dict
    normalization: Normalization
    checkpoint: dict
    path: Path


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the saved model from its recorded name/config and load its weights (eval mode)."""
    ckpt = read_checkpoint(path)
    name = ckpt["model"]["name"]
    try:
        get_spec(name)
    except LenetError as e:  # a model this version does not know
        raise CheckpointError(f"{path}: {e}") from None
    cfg = dict(ckpt["model"].get("config") or {})
    try:
        model = create_model(name, **cfg)
        model.load_state_dict(clean_state_dict(ckpt["state_dict"]))
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: weights do not fit model {name!r} ({_first_line(e)})"
        ) from None
    broken = [
        k
        for k, v in ckpt["state_dict"].items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if broken:  # a diverged run's weights answer every image with NaN
        raise CheckpointError(
            f"{path}: weights {broken[0]} hold NaN or inf (a diverged training run); "
            "it cannot predict"
        )
    model.to(device).eval()
    return LoadedModel(
        model, name, cfg, Normalization.from_dict(ckpt.get("normalization")), ckpt, Path(path)
    )
