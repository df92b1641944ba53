"""The one definition of input normalization, shared by training, eval, predict, serve and export."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Normalization:
    """Maps uint8 pixels to model inputs: ``(pixel / 255 - mean) / std``.

    ``mean=0, std=1`` is the study note's ``ToTensor()`` (pixels in [0, 1]).
    """

    mean: float = 0.0
    std: float = 1.0

    def to_dict(self) -> dict:
        """Plain-typed form for checkpoints and config files."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Normalization:
        """Rebuild from :meth:`to_dict` output (``None`` means the note's ToTensor scaling)."""
        return cls(**d) if d else cls()


# ToTensor() only: what the study note trains with.
TOTENSOR = Normalization(0.0, 1.0)
# Mean/std of the 60,000 MNIST training pixels scaled to [0, 1].
MNIST_STATS = Normalization(0.1307, 0.3081)
# LeCun et al. 1998, section II-A: input "normalized so that the background level (white)
# corresponds to a value of -0.1 and the foreground (black) corresponds to 1.175".
# (pixel/255 - mean) / std maps 0 -> -0.1 and 1 -> 1.175 when 1/std = 1.275 and mean = 0.1 * std.
PAPER_BACKGROUND, PAPER_INK = -0.1, 1.175
PAPER_1998 = Normalization(
    mean=-PAPER_BACKGROUND / (PAPER_INK - PAPER_BACKGROUND),
    std=1.0 / (PAPER_INK - PAPER_BACKGROUND),
)


def normalize(images: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """uint8 or [0,1]-float images (N,28,28) or (N,1,28,28) -> float32 (N,1,28,28) model input."""
    x = images
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    else:
        x = x.float()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if norm.mean != 0.0 or norm.std != 1.0:
        x = (x - norm.mean) / norm.std
    return x
