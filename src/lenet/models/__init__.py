"""The LeNet family by name: importing this package registers every model file below."""

from lenet.models import (  # noqa: F401
    ensemble,
    lenet1,
    lenet4,
    lenet5,
    lenet5_1998,
    lenet5_plus,
    lenet5_relu,
)
from lenet.models.registry import (
    ModelSpec,
    count_parameters,
    create_model,
    get_spec,
    list_models,
    model_config,
    register_model,
)

__all__ = [
    "ModelSpec",
    "count_parameters",
    "create_model",
    "get_spec",
    "list_models",
    "model_config",
    "register_model",
]
