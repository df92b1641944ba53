"""The model registry: every LeNet variant is created by name, so the engine never imports a model class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from lenet.errors import LenetError
from lenet.normalization import Normalization


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model: how to build it and how its inputs are scaled."""

    name: str
    builder: Callable[..., nn.Module]
    description: str
    normalization: Normalization
    defaults: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, description: str, normalization: Normalization, **defaults
) -> Callable:
    """Class/function decorator adding a model builder to the registry under ``name``."""

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, description, normalization, dict(defaults))
        return builder

    return deco


def list_models() -> list[str]:
    """Names of all registered models."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; a clear error listing the choices otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LenetError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())}"
        ) from None


def model_config(name: str, **overrides) -> dict:
    """The full plain-typed config used to build ``name`` (defaults plus overrides)."""
    return {**get_spec(name).defaults, **overrides}


def create_model(name: str, **config) -> nn.Module:
    """Build a fresh model by registry name with its default config updated by ``config``."""
    return get_spec(name).builder(**model_config(name, **config))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
