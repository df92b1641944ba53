"""Pictures people would rather look at than read: curves, confusion matrices, digit grids."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lenet.fileio import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    plt = _plt()
    try:
        return atomic_write(
            path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        )
    finally:
        plt.close(fig)


def plot_curves(history: Sequence, path: str | os.PathLike, select_on: str = "val") -> Path:
    """Loss and accuracy per epoch (train vs val/test) as one two-panel PNG."""
    plt = _plt()
    ep = [r.epoch for r in history]
    label = "test" if select_on == "test" else "val"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [r.train_loss for r in history], "o-", label="train")
    a2.plot(ep, [100 * r.train_acc for r in history], "o-", label="train")
    if any(r.val_acc is not None for r in history):
        a1.plot(ep, [r.val_loss for r in history], "s-", label=label)
        a2.plot(ep, [100 * r.val_acc for r in history], "s-", label=label)
    a1.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    a2.set(title="accuracy", xlabel="epoch", ylabel="%")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    return _save(fig, path)


def plot_confusion(
    cm: np.ndarray,
    path: str | os.PathLike,
    title: str = "confusion matrix",
    classes: Sequence[str] | None = None,
) -> Path:
    """A 10x10 confusion matrix (rows actual, columns predicted) with counts in the cells.

    ``classes`` names the ticks (the label numbers when None or when the names are the digits).
    """
    plt = _plt()
    k = cm.shape[0]
    fig, ax = plt.subplots(figsize=(6.5, 6))
    ax.imshow(np.log1p(cm), cmap="Blues")
    for i in range(k):
        for j in range(k):
            color = "white" if cm[i, j] > cm.max() / 3 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="actual", title=title)
    if classes is not None:
        ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticklabels(classes, fontsize=8)
    return _save(fig, path)


def plot_digit_grid(
    images: np.ndarray,
    predicted: Sequence[int],
    actual: Sequence[int] | None,
    path: str | os.PathLike,
    title: str = "",
    cols: int = 10,
    classes: Sequence[str] | None = None,
) -> Path:
    """One picture of many images, each captioned predicted/actual; wrong ones framed in red.

    ``classes`` maps labels to the names in the captions (the label itself when None).
    """
    plt = _plt()
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, 1.45 * rows + (0.4 if title else 0)))
    axes = np.atleast_1d(axes).ravel()
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        wrong = actual is not None and predicted[i] != actual[i]
        name = (lambda c: classes[c]) if classes is not None else str
        if classes is None or all(len(c) <= 2 for c in classes):
            cap = f"pred {name(predicted[i])}"
            cap += f" / true {name(actual[i])}" if actual is not None else ""
        else:  # long names (Fashion-MNIST's "T-shirt/top") on two lines
            cap = name(predicted[i]) + (f"\n(true: {name(actual[i])})" if wrong else "")
        ax.set_title(cap, fontsize=7, color="red" if wrong else "black")
        for s in ax.spines.values():
            s.set_edgecolor("red" if wrong else "#999999")
            s.set_linewidth(2.5 if wrong else 0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_rejection(rejection: dict, path: str | os.PathLike, title: str = "") -> Path:
    """Error rate on the answered inputs vs the fraction refused (least confident first)."""
    plt = _plt()
    c = rejection["curve"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([100 * r for r in c["rejected"]], [100 * e for e in c["error"]], "-")
    for target, v in rejection["rejection_for"].items():
        if v["threshold"] is not None:
            ax.plot(100 * v["rejected"], 100 * float(target), "o")
            ax.annotate(
                f"{100 * float(target):g}% error at {100 * v['rejected']:.1f}% rejected",
                (100 * v["rejected"], 100 * float(target)),
                textcoords="offset points",
                xytext=(8, 6),
                fontsize=8,
            )
    ax.set(xlabel="rejected (%)", ylabel="error on answered (%)", title=title)
    ax.set_xlim(0, max(12.0, 100 * max(v["rejected"] for v in rejection["rejection_for"].values())))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_error_pairs(
    pairs: Sequence[tuple[np.ndarray | None, np.ndarray | None, str, str]],
    path: str | os.PathLike,
    title: str = "",
    cols: int = 5,
) -> Path:
    """Mistakes as (original, the 28x28 the network saw, caption, caption) side by side.

    A missing picture (unreadable file, no digit found) is an empty panel saying so.
    """
    plt = _plt()
    n = len(pairs)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.5 * cols, 1.5 * rows), squeeze=False)
    for i in range(rows * cols):
        a_orig, a_seen = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        for ax in (a_orig, a_seen):
            ax.set_xticks([])
            ax.set_yticks([])
        if i >= n:
            a_orig.axis("off")
            a_seen.axis("off")
            continue
        orig, seen, cap_orig, cap_seen = pairs[i]
        for ax, img, missing in ((a_orig, orig, "unreadable"), (a_seen, seen, "nothing")):
            if img is None:
                ax.text(0.5, 0.5, missing, ha="center", va="center", fontsize=7)
            elif img.ndim == 2:
                ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(img)
        a_orig.set_title(cap_orig, fontsize=7)
        a_seen.set_title(cap_seen, fontsize=7, color="red")
        for s in a_seen.spines.values():
            s.set_edgecolor("red")
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 + 0.25 / rows)
    return _save(fig, path)
