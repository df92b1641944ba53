"""Learner views as pictures: every layer's feature maps for one digit (``lenet viz``), the learned
first-layer kernels (``lenet filters``) and original vs distorted digits (``lenet augment-preview``)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lenet.augment import augment_generator, distort
from lenet.config import augment_parts
from lenet.data import DEFAULT_DATA_DIR, load_split
from lenet.errors import LenetError
from lenet.models.layers import PartialConv2d
from lenet.normalization import TOTENSOR, Normalization, normalize
from lenet.plots import _plt, _save
from lenet.summary import shape_str, trace

log = logging.getLogger(__name__)

MAX_MAPS = 16  # feature maps drawn per layer (the rest are counted in the label)
_INDEX = re.compile(r"^(test|train):(\d+)$")


def load_digit(
    spec: str, data_dir: str | os.PathLike = DEFAULT_DATA_DIR
) -> tuple[torch.Tensor, str]:
    """``test:N`` / ``train:N`` (an MNIST index) or any image file -> (uint8 (28,28), label).

    Image files go through :func:`lenet.preprocess.preprocess`, as in ``lenet predict``.
    """
    m = _INDEX.match(spec)
    if m:
        split = load_split(m.group(1), data_dir)
        i = int(m.group(2))
        if i >= len(split):
            raise LenetError(
                f"{spec}: index out of range (the {m.group(1)} split has {len(split)})"
            )
        return split.images[i], f"MNIST {m.group(1)} #{i} (label {int(split.labels[i])})"
    path = Path(spec)
    if not path.is_file():
        raise LenetError(f"{spec}: no such image file (or use test:N for an MNIST test digit)")
    from lenet.preprocess import load_image, preprocess

    # The same preprocessing as `lenet predict` and the service: photos and drawings both work.
    arr = preprocess(load_image(path))
    return torch.from_numpy(arr.copy()), path.name


def _maps(t: torch.Tensor) -> np.ndarray:
    """A traced output (1, C, H, W) or (1, F) -> (C, H, W) maps or a (1, 1, F) strip."""
    a = t[0].float().cpu().numpy()
    if a.ndim == 3 and a.shape[1] * a.shape[2] > 1:
        return a
    return a.reshape(1, 1, -1)


@dataclass
class VizResult:
    """What :func:`viz` drew: the picture, predicted class and its probabilities."""

    path: Path
    predicted: int
    probabilities: list[float]
    layers: list[str]


def viz(
    model: nn.Module,
    normalization: Normalization,
    image: torch.Tensor,
    out: str | os.PathLike,
    title: str = "",
) -> VizResult:
    """One picture: the input digit, every layer's feature maps, the output probabilities."""
    device = next(model.parameters()).device
    x = normalize(image.unsqueeze(0), normalization).to(device)
    rows = trace(model, x, keep_outputs=True)
    probs = torch.softmax(rows[-1].output[0].float(), 0).cpu()
    # the last row is the output, drawn as bars; a flatten only repeats the maps before it
    body = [r for r in rows[:-1] if r.type != "Flatten"]
    plt = _plt()
    n = len(body) + 1
    fig = plt.figure(figsize=(14, 1.25 * n + 1.2))
    gs = fig.add_gridspec(n, MAX_MAPS + 4, wspace=0.15, hspace=0.55)
    ax = fig.add_subplot(gs[0, 0:3])
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=255)
    ax.set_title(f"input {shape_str([1, *image.shape])}", fontsize=8)
    ax.axis("off")
    ax = fig.add_subplot(gs[0, 5:])
    pred = int(probs.argmax())
    ax.bar(
        range(len(probs)),
        probs.numpy(),
        color=["C3" if i == pred else "C0" for i in range(len(probs))],
    )
    ax.set(
        xticks=range(len(probs)),
        ylim=(0, 1),
        title=f"output probabilities: predicted {pred} ({100 * probs[pred]:.1f}%)",
    )
    ax.title.set_fontsize(9)
    for i, r in enumerate(body, start=1):
        t = r.activated if r.activated is not None else r.output
        maps = _maps(t)
        label = f"{r.name}\n{shape_str(r.output_shape)}"
        if maps.shape[1] == 1:  # a vector: one strip across the row
            ax = fig.add_subplot(gs[i, 2:])
            ax.imshow(maps[0], cmap="viridis", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            continue
        shown = min(len(maps), MAX_MAPS)
        lo, hi = float(maps.min()), float(maps.max())
        for j in range(shown):
            ax = fig.add_subplot(gs[i, 2 + j])
            ax.imshow(maps[j], cmap="viridis", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                more = f"\n(first {shown} of {len(maps)})" if shown < len(maps) else ""
                ax.set_ylabel(label + more, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    path = _save(fig, out)
    return VizResult(path, pred, [float(p) for p in probs], [r.name for r in body])


def first_conv_kernels(model: nn.Module) -> tuple[str, torch.Tensor]:
    """The first convolution's name and its (out, in, k, k) kernels (zeros where unconnected)."""
    for name, m in model.named_modules():
        if isinstance(m, PartialConv2d):
            return name, m.full_weight().detach().cpu()
        if isinstance(m, nn.Conv2d):
            return name, m.weight.detach().cpu()
    raise LenetError("this model has no convolution layer to draw")


def plot_filters(model: nn.Module, out: str | os.PathLike, title: str = "") -> Path:
    """The learned first-layer kernels, one tile per (output map, input map), shared colour scale."""
    name, w = first_conv_kernels(model)
    w = w.numpy()
    n_out, n_in = w.shape[:2]
    plt = _plt()
    cols, rows = n_out, n_in
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.3 * cols + 0.8, 1.4 * rows + 0.6), squeeze=False
    )
    lim = float(np.abs(w).max()) or 1.0
    im = None
    for i in range(n_in):
        for o in range(n_out):
            ax = axes[i, o]
            im = ax.imshow(w[o, i], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{name}[{o}]", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(title or f"learned {name} kernels ({w.shape[-2]}x{w.shape[-1]})", fontsize=10)
    return _save(fig, out)


def augment_preview(
    images: torch.Tensor,
    kind: str,
    out: str | os.PathLike,
    copies: int = 6,
    seed: int = 0,
    labels: torch.Tensor | None = None,
) -> Path:
    """A grid: each row one digit, the original first, then ``copies`` random distortions."""
    if not augment_parts(kind):
        raise LenetError("--kind none distorts nothing; name what to preview (e.g. affine+stroke)")
    gen = augment_generator(seed, 0)
    x = normalize(images, TOTENSOR)  # (n, 1, 28, 28) in [0, 1]
    distorted = [distort(x, kind, gen, labels=labels) for _ in range(copies)]
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(
        n, copies + 1, figsize=(1.1 * (copies + 1), 1.15 * n + 0.5), squeeze=False
    )
    for r in range(n):
        for c in range(copies + 1):
            ax = axes[r, c]
            img = x[r, 0] if c == 0 else distorted[c - 1][r, 0]
            ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"{kind} {c}", fontsize=8)
    fig.suptitle(f"--augment {kind}: original vs distorted (seed {seed})", fontsize=10)
    return _save(fig, out)
