"""Deterministic test strings for ``lenet read``: MNIST TEST digits side by side, rendered as photos.

Each string is 2-10 MNIST test digits (never training digits) placed left to right with a gap
between the ink boxes of neighbours, measured in MNIST pixels (a digit's longest side is ~20):
positive gaps leave paper between digits, 0 lets the boxes touch, negative gaps overlap them.
Every string gets one slant (shear), and each digit a size and baseline jitter. The strip is
then scaled up and rendered the way the photo tests render single digits (tests/photos.py):
dark ink or a coloured pen on unevenly lit, tinted paper with sensor noise and dust, saved as
PNG or JPEG. The same seed always gives the same bytes (numpy's PCG64, Pillow's encoders).

Three categories, by the gaps of a string: ``separated`` (2 to 12 px), ``touching`` (-2 to 0 px)
and ``overlapping`` (-4 to -3 px). :func:`write_string_set` writes a set as image files plus a
``labels.csv``; ``scripts/make_strings.py`` is its command line.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CATEGORIES = {"separated": (2, 12), "touching": (-2, 0), "overlapping": (-4, -3)}
PENS = [(20, 20, 25), (25, 45, 160), (170, 25, 35), (20, 110, 40), (90, 30, 120)]
MIN_DIGITS, MAX_DIGITS = 2, 10


@dataclass
class StringImage:
    """One rendered string: the encoded file, its text and where each digit's ink lies."""

    data: bytes  # PNG or JPEG file bytes
    text: str  # the digits, e.g. "40213"
    category: str  # a key of CATEGORIES
    gaps: list[int]  # MNIST pixels between neighbouring ink boxes (len(text) - 1)
    boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 (exclusive) per digit, image pixels
    fmt: str  # "PNG" or "JPEG"


def _ink_crop(digit: np.ndarray) -> np.ndarray:
    """The digit's ink box (float32 coverage in [0, 1]) cut out of its 28x28."""
    a = np.asarray(digit, np.float32) / 255.0
    x, y, w, h = cv2.boundingRect((a > 0.05).astype(np.uint8))
    return a[y : y + h, x : x + w]


def _jittered(crop: np.ndarray, scale: float, shear: float) -> np.ndarray:
    """Resize by ``scale`` and shear horizontally by ``shear`` (x += shear * (h/2 - y))."""
    h, w = crop.shape
    nh, nw = max(2, round(h * scale)), max(2, round(w * scale))
    a = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_LINEAR)
    pad = int(np.ceil(abs(shear) * nh / 2)) + 1
    m = np.float32([[1, -shear, pad + shear * nh / 2], [0, 1, 0]])
    out = cv2.warpAffine(a, m, (nw + 2 * pad, nh), flags=cv2.INTER_LINEAR)
    x, y, bw, bh = cv2.boundingRect((out > 0.05).astype(np.uint8))
    return out[y : y + bh, x : x + bw]


def compose_strip(
    digits: list[np.ndarray], gaps: list[int], rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """MNIST 28x28 digits -> one strip of ink coverage (float32, MNIST scale) and the ink box
    (x0, y0, x1, y1) of every digit in it. One slant for the string, size and baseline jitter
    per digit; overlapping ink adds up to full coverage (two strokes over each other)."""
    shear = rng.uniform(-0.25, 0.25)
    pieces = [_jittered(_ink_crop(d), rng.uniform(0.85, 1.15), shear) for d in digits]
    shifts = [int(rng.integers(-2, 3)) for _ in pieces]  # baseline jitter, MNIST pixels
    margin = 6
    height = max(p.shape[0] + s for p, s in zip(pieces, shifts, strict=True)) + 2 * margin + 4
    width = sum(p.shape[1] for p in pieces) + sum(max(g, 0) for g in gaps) + 2 * margin
    strip = np.zeros((height, width), np.float32)
    boxes = []
    x = margin
    base = height - margin - 2  # digits stand on a common baseline, jittered
    for i, (p, s) in enumerate(zip(pieces, shifts, strict=True)):
        if i:
            x = boxes[-1][2] + gaps[i - 1]
        h, w = p.shape
        y = base - h + s
        strip[y : y + h, x : x + w] = np.minimum(strip[y : y + h, x : x + w] + p, 1.0)
        boxes.append((x, y, x + w, y + h))
    right = boxes[-1][2] + margin
    return strip[:, :right], boxes


def lighting(h: int, w: int, rng: np.random.Generator, amp: float) -> np.ndarray:
    """A linear gradient in a random direction plus a soft vignette (values around 0); the
    single-digit photos of the tests (tests/photos.py) light their paper the same way."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(t) * (xx / w - 0.5) + np.sin(t) * (yy / h - 0.5)) * amp
    vig = -0.5 * amp * (((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2)
    return (ramp + vig).astype(np.float32)


def render_photo(
    strip: np.ndarray,
    boxes: list[tuple[int, int, int, int]],
    rng: np.random.Generator,
    size: tuple[int, int] | None = None,
) -> tuple[bytes, list[tuple[int, int, int, int]], str]:
    """Ink coverage strip -> (encoded photo, boxes in photo pixels, format).

    The strip is scaled up (bicubic) into a page with margins, or to fit ``size`` = (w, h) when
    given; the page is tinted paper under a lighting gradient, with a pen, noise, dust and
    JPEG (two thirds) or PNG (one third), as the single-digit photo tests do.
    """
    sh, sw = strip.shape
    if size is None:
        s = rng.uniform(1.5, 3.5)
        w = int(sw * s * rng.uniform(1.05, 1.4))
        h = int(sh * s * rng.uniform(1.2, 2.5))
    else:
        w, h = size
        s = min(0.9 * w / sw, 0.8 * h / sh)
    nw, nh = max(1, round(sw * s)), max(1, round(sh * s))
    cov_s = np.clip(cv2.resize(strip, (nw, nh), interpolation=cv2.INTER_CUBIC), 0, 1)
    w, h = max(w, nw), max(h, nh)
    y, x = int(rng.integers(0, h - nh + 1)), int(rng.integers(0, w - nw + 1))
    cov = np.zeros((h, w), np.float32)
    cov[y : y + nh, x : x + nw] = cov_s
    fx, fy = nw / sw, nh / sh
    out_boxes = [
        (
            x + int(bx0 * fx),
            y + int(by0 * fy),
            x + int(np.ceil(bx1 * fx)),
            y + int(np.ceil(by1 * fy)),
        )
        for bx0, by0, bx1, by1 in boxes
    ]
    light = lighting(h, w, rng, rng.uniform(0.1, 0.3))
    paper = rng.uniform(0.8, 0.95) + light
    tint = np.array([1.0, rng.uniform(0.97, 1.0), rng.uniform(0.9, 1.0)], np.float32)
    pen = np.array(PENS[int(rng.integers(len(PENS)))], np.float32) / 255 * rng.uniform(0.7, 1.3)
    cov = cov * rng.uniform(0.75, 1.0)  # ink a bit weaker than full coverage, as on paper
    img = paper[..., None] * tint * (1 - cov[..., None]) + pen * cov[..., None]
    for _ in range(int(rng.integers(0, 6))):  # dust specks
        sy, sx = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        img[sy : sy + 2, sx : sx + 2] *= rng.uniform(0.3, 0.7)
    img = img + rng.normal(0, rng.uniform(0.01, 0.035), img.shape).astype(np.float32)
    a = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    fmt = "PNG" if rng.random() < 1 / 3 else "JPEG"
    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(a).save(buf, "JPEG", quality=int(rng.integers(60, 92)))
    else:
        Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue(), out_boxes, fmt


def make_string(
    images: np.ndarray,
    labels: np.ndarray,
    n_digits: int,
    category: str,
    rng: np.random.Generator,
    size: tuple[int, int] | None = None,
) -> StringImage:
    """One string of ``n_digits`` digits drawn from ``images`` (uint8 (N, 28, 28), MNIST test)
    with gaps of ``category``, rendered as a photo (``size`` = (w, h) fixes the page size)."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}")
    lo, hi = CATEGORIES[category]
    idx = rng.choice(len(images), n_digits, replace=False)
    gaps = [int(g) for g in rng.integers(lo, hi + 1, n_digits - 1)]
    strip, boxes = compose_strip([images[i] for i in idx], gaps, rng)
    data, boxes, fmt = render_photo(strip, boxes, rng, size)
    text = "".join(str(int(labels[i])) for i in idx)
    return StringImage(data, text, category, gaps, boxes, fmt)


def make_strings(
    images: np.ndarray, labels: np.ndarray, n: int, category: str, seed: int = 0
) -> list[StringImage]:
    """``n`` strings of ``category``, lengths cycling through 2..10 digits (deterministic)."""
    rng = np.random.default_rng([seed, list(CATEGORIES).index(category)])
    span = MAX_DIGITS - MIN_DIGITS + 1
    return [make_string(images, labels, MIN_DIGITS + i % span, category, rng) for i in range(n)]


def write_string_set(
    folder: str | Path, images: np.ndarray, labels: np.ndarray, n: int, seed: int = 0
) -> Path:
    """``n`` strings of every category as ``folder/<category>-NNNN.{png,jpg}`` and one
    ``labels.csv`` (file, text, category, gaps); returns the CSV's path. The folder must be
    empty or new: nothing there is overwritten."""
    from lenet.errors import LenetError
    from lenet.fileio import atomic_write_bytes

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise LenetError(f"{folder} is not empty; give a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for category in CATEGORIES:
        for i, s in enumerate(make_strings(images, labels, n, category, seed)):
            name = f"{category}-{i:04d}.{'png' if s.fmt == 'PNG' else 'jpg'}"
            atomic_write_bytes(folder / name, s.data)
            rows.append([name, s.text, category, " ".join(map(str, s.gaps))])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "text", "category", "gaps"])
    w.writerows(rows)
    path = folder / "labels.csv"
    atomic_write_bytes(path, buf.getvalue().encode())
    return path
