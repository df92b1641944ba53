"""Distortions on the in-memory batch (``--augment``): random affine maps (LeCun et al. 1998,
section III-C: small rotations, scalings, shears and translations) and elastic distortions
(Simard, Steinkraus and Platt 2003), both as ONE ``grid_sample`` per batch with torch ops; and,
for writers and scanners MNIST never saw, random stroke widths (a grey-level dilation or
erosion), random aspect ratios, random low resolutions (down- then up-sampling), and the
continental styles MNIST's American writers rarely used (a 1 with a long flag, a crossed 7).

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

from lenet.config import augment_parts, derive_seed


@dataclass(frozen=True)
class DistortionParams:
    """Ranges of the random distortions (each drawn uniformly in +-range per image)."""

    rotate_deg: float = 12.0  # rotation
    scale: float = 0.12  # isotropic scale 1 +- scale
    shear: float = 0.15  # horizontal shear factor
    translate_px: float = 2.5  # shift, in pixels of the 28x28 image
    elastic_alpha: float = 34.0  # Simard et al.: displacement scale in pixels...
    elastic_sigma: float = 4.0  # ...of a uniform(-1, 1) field smoothed by a Gaussian of this sigma
    stroke_thin: float = 0.6  # stroke width: up to this share of a 3x3 grey-level erosion...
    stroke_thick: float = 1.5  # ...or this many 3x3 dilations (a fraction blends the next one)
    aspect: float = 0.5  # width scaled by exp(+-aspect * u): up to 1.65x wider or narrower
    lowres_p: float = 0.5  # share of images seen at a low resolution...
    lowres_min: int = 8  # ...of LOWRES_MIN..side pixels square, then back up bilinearly
    continental_p: float = 0.5  # share of the 1s given a flag and of the 7s given a crossbar


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


def stroke_width(x: torch.Tensor, gen: torch.Generator, p: DistortionParams) -> torch.Tensor:
    """Thinner or thicker strokes: each image blended toward its 3x3 grey-level erosion or
    (once or twice) dilation by a random amount. Works on any normalization whose ink is the
    high value (all of lenet's), because max-pooling commutes with an increasing affine map."""
    t = torch.rand(len(x), generator=gen) * (p.stroke_thick + p.stroke_thin) - p.stroke_thin
    t = t.to(x.device, x.dtype).view(-1, 1, 1, 1)  # < 0 thins, > 0 thickens
    d1 = F.max_pool2d(x, 3, 1, 1)
    d2 = F.max_pool2d(d1, 3, 1, 1)
    e1 = -F.max_pool2d(-x, 3, 1, 1)
    return (
        x + t.clamp(0, 1) * (d1 - x) + (t - 1).clamp(0, 1) * (d2 - d1) + (-t).clamp(0, 1) * (e1 - x)
    )


def low_resolution(x: torch.Tensor, gen: torch.Generator, p: DistortionParams) -> torch.Tensor:
    """About ``lowres_p`` of the images averaged down to a random ``lowres_min``..side pixels
    square and interpolated back up: the blur of a coarse scan or a small crop, enlarged."""
    n, _, h, w = x.shape
    sides = torch.randint(p.lowres_min, w + 1, (n,), generator=gen)
    sides[torch.rand(n, generator=gen) >= p.lowres_p] = w  # these stay as they are
    out = x.clone()
    for side in sides.unique().tolist():
        if side == w:
            continue
        idx = (sides == side).nonzero().flatten().to(x.device)
        small = F.interpolate(x[idx], size=(side, side), mode="area")
        out[idx] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def _segment_ink(a: torch.Tensor, b: torch.Tensor, width: torch.Tensor, h: int, w: int):
    """(m, h, w) coverage in [0, 1] of anti-aliased segments from points ``a`` to ``b`` ((m, 2)
    as x, y in pixels) drawn ``width`` (m,) pixels wide."""
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=a.dtype), torch.arange(w, dtype=a.dtype), indexing="ij"
    )
    p = torch.stack([xx, yy], -1).view(1, h, w, 2)  # pixel centres
    a, d = a.view(-1, 1, 1, 2), (b - a).view(-1, 1, 1, 2)
    t = (((p - a) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-6)).clamp(0, 1)  # (m, h, w)
    dist = (p - (a + t.unsqueeze(-1) * d)).norm(dim=-1)
    return (width.view(-1, 1, 1) / 2 + 0.5 - dist).clamp(0, 1)


def continental(
    x: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, p: DistortionParams
) -> torch.Tensor:
    """About ``continental_p`` of the 1s get a long flag from the top of their stroke down to
    the left (25-60 degrees, 30-55% of the digit's height) and of the 7s a crossbar through the
    stem (30-50% of the height): how much of Europe writes them. MNIST digit labels only."""
    n, _, h, w = x.shape
    # Six numbers per image, drawn for every image so the stream never depends on the labels
    # (the sixth is unused; drawing it keeps trained runs, the bundled weights, reproducible).
    u = torch.rand(n, 6, generator=gen)
    labels = labels.cpu()
    ones = (labels == 1) & (u[:, 0] < p.continental_p)
    sevens = (labels == 7) & (u[:, 0] < p.continental_p)
    idx = (ones | sevens).nonzero().flatten()
    if len(idx) == 0:
        return x
    xi = x[idx].cpu().float()  # (m, 1, h, w)
    lo = xi.amin(dim=(1, 2, 3), keepdim=True)
    span = (xi.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
    rel = (xi - lo) / span  # 0 background .. 1 ink
    ink = rel[:, 0] > 0.5  # (m, h, w)
    rows = ink.any(2)  # (m, h)
    top = rows.float().argmax(1)  # first inked row
    bottom = h - 1 - rows.flip(1).float().argmax(1)
    height = (bottom - top + 1).float()
    cols = torch.arange(w, dtype=torch.float32)
    r = torch.arange(len(idx))

    def centre(row: torch.Tensor) -> torch.Tensor:  # mean inked column of each image's row
        line = ink[r, row.long().clamp(0, h - 1)].float()  # (m, w)
        return (line * cols).sum(1) / line.sum(1).clamp_min(1)

    v = u[idx]
    is_one = ones[idx]
    # a 1: from the top of the stroke, down and to the left
    angle = torch.deg2rad(25 + 35 * v[:, 1])
    length = height * (0.30 + 0.25 * v[:, 2])
    start_one = torch.stack([centre(top), top.float()], 1)
    end_one = start_one + torch.stack([-length * torch.cos(angle), length * torch.sin(angle)], 1)
    # a 7: a short horizontal bar through the stem a little below the middle
    y_bar = top + height * (0.45 + 0.15 * v[:, 3])
    half = height * (0.15 + 0.10 * v[:, 2])
    xc = centre(y_bar)
    start_seven = torch.stack([xc - half, y_bar], 1)
    end_seven = torch.stack([xc + half, y_bar], 1)
    start = torch.where(is_one.view(-1, 1), start_one, start_seven)
    end = torch.where(is_one.view(-1, 1), end_one, end_seven)
    stroke = _segment_ink(start, end, 1.5 + 1.0 * v[:, 4], h, w).unsqueeze(1)
    out = x.clone()
    out[idx] = (lo + torch.maximum(rel, stroke) * span).to(x.device, x.dtype)
    return out


def distort(
    x: torch.Tensor,
    kind: str,
    gen: torch.Generator,
    params: DistortionParams = DEFAULT_PARAMS,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Randomly distort a batch (N, C, H, W) of already-normalized images; same shape back.

    ``kind`` is ``none``, ``both`` (affine + elastic) or parts joined by ``+`` (see
    :func:`lenet.config.augment_parts`). Continental styles (which need the digits'
    ``labels``) come first, then stroke width, then the geometry (one ``grid_sample``), then
    the resolution. Pixels pulled from outside the image repeat the
    border (background under any normalization), so the digit keeps the input's background.
    """
    parts = augment_parts(kind)
    if not parts:
        return x
    n, _, h, w = x.shape
    if "continental" in parts:
        if labels is None:
            raise ValueError("continental distortions need the digits' labels")
        x = continental(x, labels, gen, params)
    if "stroke" in parts:
        x = stroke_width(x, gen, params)
    if parts & {"affine", "elastic", "aspect"}:
        if "affine" in parts:
            theta = affine_matrices(n, gen, w, params)
        else:
            theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).repeat(n, 1, 1)
        if "aspect" in parts:  # output -> input map: dividing x-coordinates widens the digit
            u = torch.rand(n, generator=gen) * 2 - 1
            theta = theta.clone()
            theta[:, 0, :2] = theta[:, 0, :2] * torch.exp(u * params.aspect).view(-1, 1)
        grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
        if "elastic" in parts:
            grid = grid + elastic_field(n, gen, w, params)
        grid = grid.to(device=x.device, dtype=x.dtype)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if "lowres" in parts:
        x = low_resolution(x, gen, params)
    return x


class Augmenter:
    """Callable ``xb -> distorted xb`` for one epoch of a training run."""

    def __init__(self, kind: str, seed: int, epoch: int, params: DistortionParams = DEFAULT_PARAMS):
        self.kind, self.params = kind, params
        self.gen = augment_generator(seed, epoch)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return distort(x, self.kind, self.gen, self.params, labels)


def make_augmenter(kind: str, seed: int, epoch: int) -> Augmenter | None:
    """The epoch's augmenter, or ``None`` when ``kind`` is ``none`` (the engine then skips it)."""
    return None if kind == "none" else Augmenter(kind, seed, epoch)
