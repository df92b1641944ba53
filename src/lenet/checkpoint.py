"""Checkpoints: plain-typed dicts written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lenet._version import __version__
from lenet.errors import CheckpointError
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
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


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


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint (ours or a bare note-style ``state_dict``) safely, as a plain dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt/unsafe files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({first[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (found {type(obj).__name__})")
    if "state_dict" in obj and "model" in obj:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint format {obj['format_version']} is newer than this lenet "
                f"understands ({FORMAT_VERSION}); upgrade lenet"
            )
        return obj
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
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
    get_spec(name)  # clear error for a model this version does not know
    cfg = dict(ckpt["model"].get("config") or {})
    try:
        model = create_model(name, **cfg)
        model.load_state_dict(clean_state_dict(ckpt["state_dict"]))
    except (RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: weights do not fit model {name!r} ({first[:200]})"
        ) from None
    model.to(device).eval()
    return LoadedModel(
        model, name, cfg, Normalization.from_dict(ckpt.get("normalization")), ckpt, Path(path)
    )
