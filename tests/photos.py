"""Realistic "photos" of MNIST test digits: ink on unevenly lit paper, pens, JPEG, canvases.

Each MNIST digit (light on dark, 28x28) becomes the ink of a much larger picture: dark ink (or a
coloured pen) on paper with a lighting gradient, sensor noise and dust specks, off-centre on a
large canvas, saved as PNG or JPEG; or strokes on a transparent canvas; or chalk on a board.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from lenet.bench.strings import lighting

KINDS = ("paper_png", "paper_jpeg", "pen_jpeg", "transparent_png", "large_jpeg", "chalk_png")
PENS = [(20, 20, 25), (25, 45, 160), (170, 25, 35), (20, 110, 40), (90, 30, 120)]


def ink_alpha(digit: np.ndarray, size: int) -> np.ndarray:
    """The digit upscaled smoothly to ``size`` x ``size``: stroke coverage in [0, 1]."""
    im = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(im, dtype=np.float32) / 255.0, 0, 1)


def _encode(a: np.ndarray, fmt: str, rng: np.random.Generator) -> bytes:
    a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    im = Image.fromarray(a)
    if fmt == "JPEG":
        im.save(buf, "JPEG", quality=int(rng.integers(55, 90)))
    else:
        im.save(buf, "PNG")
    return buf.getvalue()


def shadowed_png(ink: np.ndarray, edge: str = "top") -> bytes:
    """PNG of ``ink`` (float32 (H, W) coverage in [0, 1]) at half contrast on paper that darkens
    steeply towards its top or bottom ``edge`` (0.95 -> 0.45 there, quadratically)."""
    d = np.mgrid[0 : ink.shape[0], 0 : ink.shape[1]][0].astype(np.float32) / ink.shape[0]
    shade = (1 - d) ** 2 if edge == "top" else d**2  # 1 at that edge
    gray = (0.95 - 0.5 * shade) * (1 - 0.5 * ink)
    return _encode(255 * gray, "PNG", np.random.default_rng(0))


def make_photo(digit: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
    """One encoded image file (PNG/JPEG bytes) showing ``digit`` the way ``kind`` says."""
    big = kind == "large_jpeg"
    size = int(rng.integers(120, 260)) if big else int(rng.integers(56, 160))
    alpha = ink_alpha(digit, size)
    # Canvas: larger than the digit box, digit off-centre.
    scale = rng.uniform(2.5, 5.0) if big else rng.uniform(1.05, 1.8)
    h, w = int(size * scale * rng.uniform(0.9, 1.2)), int(size * scale * rng.uniform(0.9, 1.2))
    h, w = max(h, size), max(w, size)
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    cov = np.zeros((h, w), np.float32)
    cov[y : y + size, x : x + size] = alpha

    if kind == "transparent_png":
        rgba = np.zeros((h, w, 4), np.float32)
        rgba[..., :3] = PENS[int(rng.integers(len(PENS)))]
        rgba[..., 3] = cov * 255
        return _encode(rgba, "PNG", rng)

    noise = rng.uniform(0.01, 0.035)
    light = lighting(h, w, rng, rng.uniform(0.1, 0.3))
    if kind == "chalk_png":  # light chalk on a dark green board
        board = np.array([35, 60, 45], np.float32) / 255 + light[..., None] * 0.5
        chalk = np.array([235, 235, 225], np.float32) / 255
        img = board * (1 - cov[..., None]) + chalk * cov[..., None]
    else:
        paper = rng.uniform(0.8, 0.95) + light
        tint = np.array([1.0, rng.uniform(0.97, 1.0), rng.uniform(0.9, 1.0)], np.float32)
        paper_rgb = paper[..., None] * tint
        pen = PENS[int(rng.integers(len(PENS)))] if kind == "pen_jpeg" else (30, 30, 35)
        pen = np.array(pen, np.float32) / 255 * rng.uniform(0.7, 1.3)
        # Ink is a bit weaker where the pen is thin, as on real paper.
        cov = cov * rng.uniform(0.75, 1.0)
        img = paper_rgb * (1 - cov[..., None]) + pen * cov[..., None]
        # Dust: a few dark specks anywhere on the page.
        for _ in range(int(rng.integers(0, 6))):
            sy, sx = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
            img[sy : sy + 2, sx : sx + 2] *= rng.uniform(0.3, 0.7)
    img = img + rng.normal(0, noise, img.shape).astype(np.float32)
    fmt = "PNG" if kind.endswith("png") else "JPEG"
    return _encode(img * 255, fmt, rng)


def make_photos(images: np.ndarray, seed: int = 0) -> list[bytes]:
    """One photo per MNIST image, cycling through every :data:`KINDS`."""
    rng = np.random.default_rng(seed)
    return [make_photo(d, KINDS[i % len(KINDS)], rng) for i, d in enumerate(images)]


def naive_28x28(data: bytes) -> np.ndarray:
    """The naive path: open, grayscale, plain resize to 28x28 (no MNIST-style steps)."""
    im = Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a 0/1 mask to a one-pixel skeleton (a test helper, vectorized)."""
    img = (np.asarray(mask) > 0).astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            p = np.pad(img, 1)
            # the 8 neighbours, clockwise from north: P2..P9 in Zhang and Suen (1984)
            n = [p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:]]
            n += [p[2:, 1:-1], p[2:, :-2], p[1:-1, :-2], p[:-2, :-2]]
            count = sum(a.astype(np.int32) for a in n)
            turns = sum(((n[i] == 0) & (n[(i + 1) % 8] == 1)).astype(np.int32) for i in range(8))
            p2, p4, p6, p8 = n[0], n[2], n[4], n[6]
            if step == 0:
                side = ((p2 * p4 * p6) == 0) & ((p4 * p6 * p8) == 0)
            else:
                side = ((p2 * p4 * p8) == 0) & ((p2 * p6 * p8) == 0)
            drop = (img == 1) & (count >= 2) & (count <= 6) & (turns == 1) & side
            if drop.any():
                img[drop] = 0
                changed = True
        if not changed:
            return img


def hairline_png(digit: np.ndarray, size: int = 280) -> bytes:
    """``digit`` as a one-pixel line, dark on white, on a ``size`` canvas: a 1-px pencil or a
    mouse drawing (the digit's own strokes thinned to their skeleton)."""
    box = int(size * 0.7)
    skeleton = thin(ink_alpha(digit, box) >= 0.5)
    page = np.full((size, size), 255, np.uint8)
    o = (size - box) // 2
    page[o : o + box, o : o + box][skeleton == 1] = 0
    buf = io.BytesIO()
    Image.fromarray(page).save(buf, "PNG")
    return buf.getvalue()
