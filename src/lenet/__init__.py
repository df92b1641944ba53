"""lenet: handwritten-digit recognition with the LeNet family, on PyTorch."""

__version__ = "0.1.0"

from lenet.checkpoint import load_model, read_checkpoint  # noqa: E402
from lenet.config import TrainConfig, make_config  # noqa: E402
from lenet.data import ensure_mnist, load_split  # noqa: E402
from lenet.engine import train  # noqa: E402
from lenet.errors import ImageError, LenetError, NoDigitError  # noqa: E402
from lenet.evaluation import evaluate, show  # noqa: E402
from lenet.models import create_model, list_models  # noqa: E402
from lenet.predictor import Prediction, Predictor  # noqa: E402

__all__ = [
    "ImageError",
    "LenetError",
    "NoDigitError",
    "TrainConfig",
    "create_model",
    "ensure_mnist",
    "evaluate",
    "list_models",
    "load_model",
    "load_split",
    "make_config",
    "Prediction",
    "Predictor",
    "read_checkpoint",
    "show",
    "train",
]
