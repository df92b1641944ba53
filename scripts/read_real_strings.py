"""Strings of REAL handwritten digits for ``lenet read``: the dev sets' single digits side by side.

    python scripts/read_real_strings.py --data-dir data [--n 150] [--seed 0] [--no-line-net]

No set of real multi-digit strings is in the repository, so this composes them from the real
single digits of ``lenet data --real`` (250 pen-drawn, 1,797 optdigits): each file's ink is cut
out, scaled to MNIST's 20 px height and placed as the benchmark places MNIST test digits
(:func:`lenet.bench.strings.compose_strip`: gaps per category, slant, size and baseline jitter,
rendered as a photo). The writers are real and never seen in training; the spacing is synthetic.
Prints string and character accuracy per category with the bundled weights. Figures, not
assertions.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

from lenet.bench.read import score
from lenet.bench.strings import CATEGORIES, MAX_DIGITS, MIN_DIGITS, compose_strip, render_photo
from lenet.evaluation import load_labelled_folder
from lenet.preprocess import load_image, to_gray
from lenet.reader import Reader
from lenet.realdata import REAL_SETS, real_dir


def digit_ink(path) -> np.ndarray:
    """An image file -> its ink (uint8, bright on dark), cut out and scaled to 20 px high."""
    g = to_gray(load_image(path), 512)  # float32 [0, 1]
    ink = 1.0 - g if np.median(g) > 0.5 else g
    x, y, w, h = cv2.boundingRect((ink > 0.2).astype(np.uint8))
    ink = ink[y : y + h, x : x + w]
    f = 20.0 / h
    ink = cv2.resize(ink, (max(2, round(w * f)), 20), interpolation=cv2.INTER_AREA)
    return np.clip(ink * 255 / max(float(ink.max()), 1e-6), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    """Compose, read, print."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--n", type=int, default=150, help="strings per category (default 150)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--line-net", help="another line network (default: the bundled one)")
    p.add_argument("--no-line-net", action="store_true", help="read without the line network")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    items = [it for name in REAL_SETS for it in load_labelled_folder(real_dir(a.data_dir, name))]
    digits = [digit_ink(path) for path, _ in items]
    labels = [label for _, label in items]
    reader = Reader(line_net=False if a.no_line_net else a.line_net)
    for k, cat in enumerate(CATEGORIES):
        rng = np.random.default_rng([a.seed, 77, k])
        lo, hi = CATEGORIES[cat]
        truths, texts = [], []
        for i in range(a.n):
            n = MIN_DIGITS + i % (MAX_DIGITS - MIN_DIGITS + 1)
            idx = rng.choice(len(digits), n, replace=False)
            gaps = [int(g) for g in rng.integers(lo, hi + 1, n - 1)]
            strip, boxes = compose_strip([digits[j] for j in idx], gaps, rng)
            data, _, _ = render_photo(strip, boxes, rng)
            truths.append("".join(str(labels[j]) for j in idx))
            texts.append(reader.read_one(data).text)
        r = score(truths, texts)
        print(
            f"{cat:<12} {r['strings']:>4} strings  {100 * r['string_accuracy']:5.1f}%  "
            f"characters {100 * r['char_accuracy']:6.2f}%"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
