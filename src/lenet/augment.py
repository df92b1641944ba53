"""Distortions on the in-memory batch (``--augment``): random affine maps (LeCun et al. 1998,
section III-C: small rotations, scalings, shears and translations) and elastic distortions
(Simard, Steinkraus and Platt 2003), both as ONE ``grid_sample`` per batch with torch ops.

Randomness comes from a private generator seeded from (seed, epoch), so a run is reproducible
under ``--seed``, a resumed run distorts exactly as the uninterrupted one would, and nothing
else's random stream (dropout, init) is disturbed. Numbers are drawn on the CPU, so CPU and GPU
runs see the same distortions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lenet.config import AUGMENTS, derive_seed


@dataclass(frozen=True)
class DistortionParams:
    """Ranges of the random distortions (each drawn uniformly in +-range per image)."""

    rotate_deg: float = 12.0  # rotation
    scale: float = 0.12  # isotropic scale 1 +- scale
    shear: float = 0.15  # horizontal shear factor
    translate_px: float = 2.5  # shift, in pixels of the 28x28 image
    elastic_alpha: float = 34.0  # Simard et al.: displacement scale in pixels...
    elastic_sigma: float = 4.0  # ...of a uniform(-1, 1) field smoothed by a Gaussian of this sigma


DEFAULT_PARAMS = DistortionParams()


def augment_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator for epoch ``epoch`` of a run with ``seed`` (pure function of both)."""
    return torch.Generator().manual_seed(derive_seed(seed, "augment", epoch))


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def affine_matrices(n: int, gen: torch.Generator, size: int, p: DistortionParams) -> torch.Tensor:
    """(n, 2, 3) random affine maps for ``affine_grid`` (output -> input coordinates)."""
    u = torch.rand(n, 5, generator=gen) * 2 - 1  # five uniform(-1, 1) numbers per image
    angle = u[:, 0] * math.radians(p.rotate_deg)
    scale = 1 + u[:, 1] * p.scale
    shear = u[:, 2] * p.shear
    # translate: pixels -> normalized [-1, 1] coordinates (align_corners=False: 2/size per pixel)
    tx, ty = u[:, 3] * p.translate_px * 2 / size, u[:, 4] * p.translate_px * 2 / size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # rotation/scale composed with a horizontal shear [[1, shear], [0, 1]]
    theta = torch.stack(
        [
            torch.stack([cos, cos * shear - sin, tx], 1),
            torch.stack([sin, sin * shear + cos, ty], 1),
        ],
        1,
    )
    return theta


def elastic_field(n: int, gen: torch.Generator, size: int, p: DistortionParams) -> torch.Tensor:
    """(n, size, size, 2) smooth random displacements in normalized coordinates."""
    field = torch.rand(n, 2, size, size, generator=gen) * 2 - 1
    k = _gaussian_kernel(p.elastic_sigma)
    pad = len(k) // 2
    # separable Gaussian blur, each displacement component on its own channel
    kx = k.view(1, 1, 1, -1).repeat(2, 1, 1, 1)
    ky = k.view(1, 1, -1, 1).repeat(2, 1, 1, 1)
    field = F.conv2d(F.pad(field, (pad, pad, 0, 0), mode="reflect"), kx, groups=2)
    field = F.conv2d(F.pad(field, (0, 0, pad, pad), mode="reflect"), ky, groups=2)
    return (field * p.elastic_alpha * 2 / size).permute(0, 2, 3, 1)


def distort(
    x: torch.Tensor, kind: str, gen: torch.Generator, params: DistortionParams = DEFAULT_PARAMS
) -> torch.Tensor:
    """Randomly distort a batch (N, C, H, W) of already-normalized images; same shape back.

    Pixels pulled from outside the image repeat the border (background under any
    normalization), so the distorted digit keeps the background level of the input.
    """
    if kind == "none":
        return x
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augment {kind!r}")
    n, _, h, w = x.shape
    if kind in ("affine", "both"):
        theta = affine_matrices(n, gen, w, params)
    else:
        theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(n, 2, 3)
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
    if kind in ("elastic", "both"):
        grid = grid + elastic_field(n, gen, w, params)
    grid = grid.to(device=x.device, dtype=x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Augmenter:
    """Callable ``xb -> distorted xb`` for one epoch of a training run."""

    def __init__(self, kind: str, seed: int, epoch: int, params: DistortionParams = DEFAULT_PARAMS):
        self.kind, self.params = kind, params
        self.gen = augment_generator(seed, epoch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return distort(x, self.kind, self.gen, self.params)


def make_augmenter(kind: str, seed: int, epoch: int) -> Augmenter | None:
    """The epoch's augmenter, or ``None`` when ``kind`` is ``none`` (the engine then skips it)."""
    return None if kind == "none" else Augmenter(kind, seed, epoch)
