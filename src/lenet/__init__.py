"""lenet: handwritten-digit recognition with the LeNet family, on PyTorch.

The public names below are loaded on first use, so ``import lenet`` (and ``lenet --help``) does
not pay for importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util

from lenet._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "load_model": "lenet.checkpoint",
    "read_checkpoint": "lenet.checkpoint",
    "TrainConfig": "lenet.config",
    "make_config": "lenet.config",
    "ensure_data": "lenet.data",
    "ensure_mnist": "lenet.data",
    "load_split": "lenet.data",
    "train": "lenet.engine",
    "ImageError": "lenet.errors",
    "LenetError": "lenet.errors",
    "NoDigitError": "lenet.errors",
    "evaluate": "lenet.evaluation",
    "evaluate_images": "lenet.evaluation",
    "prediction_grid": "lenet.evaluation",
    "show": "lenet.evaluation",  # deprecated name of prediction_grid
    "create_model": "lenet.models",
    "list_models": "lenet.models",
    "Prediction": "lenet.predictor",
    "Predictor": "lenet.predictor",
    "Reader": "lenet.reader",
    "Reading": "lenet.reader",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    """Import a public name's module, or a submodule (``lenet.data``), on first use (PEP 562)."""
    if name not in _EXPORTS:
        # ``lenet.data`` after a bare ``import lenet``: the submodule, as an eager package gives
        if not name.startswith("_") and importlib.util.find_spec(f"lenet.{name}") is not None:
            return importlib.import_module(f"lenet.{name}")  # import sets it as our attribute
        raise AttributeError(f"module 'lenet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """The public names, for tab completion."""
    return sorted(set(globals()) | set(_EXPORTS))
