"""What inference and training share: the device to run on and batched logits, loss and accuracy.

Kept apart from the training engine so that ``predictor``, ``evaluation`` and the service never
import training code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lenet.errors import LenetError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device that is absent is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LenetError("--device cuda asked for, but PyTorch sees no CUDA GPU")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise LenetError("--device mps asked for, but this PyTorch has no MPS device")
    return torch.device(name)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits (N, classes) for already-normalized inputs (N, 1, H, W), in eval mode."""
    was_training = model.training
    model.eval()
    chunks = [model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    out = torch.cat(chunks) if chunks else model(x)  # an empty shard still has a (0, 10) shape
    model.train(was_training)
    return out


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (exact counts, not a mean of batch means)."""
    loss = F.cross_entropy(logits, labels, reduction="sum").item() / max(len(labels), 1)
    acc = (logits.argmax(1) == labels).sum().item() / max(len(labels), 1)
    return loss, acc
