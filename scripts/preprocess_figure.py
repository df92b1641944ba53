"""Draw docs/preprocess.png: one synthetic photo of an MNIST test digit through every step.

python scripts/preprocess_figure.py [--data-dir data] [--out docs/preprocess.png]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from lenet.data import load_split  # noqa: E402
from lenet.plots import _plt, _save  # noqa: E402
from lenet.predictor import Predictor  # noqa: E402
from lenet.preprocess import preprocess  # noqa: E402
from photos import make_photo  # noqa: E402


def main() -> int:
    """Make one photo per kind for a few digits and draw each step of the pipeline."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", default=str(ROOT / "docs" / "preprocess.png"))
    args = p.parse_args()
    test = load_split("test", args.data_dir)
    rng = np.random.default_rng(3)
    rows = [(1, "paper_jpeg"), (2, "large_jpeg"), (3, "pen_jpeg"), (4, "chalk_png")]
    pred = Predictor()
    plt = _plt()
    cols = ["photo", "grayscale", "light on dark", "background removed", "digit found", "28x28"]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.0 * len(cols), 2.1 * len(rows)))
    for r, (idx, kind) in enumerate(rows):
        data = make_photo(test.images[idx].numpy(), kind, rng)
        steps: dict = {}
        preprocess(data, steps)
        y0, x0, y1, x1 = steps["box"]
        shown = [
            np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
            steps["gray"],
            steps["light_on_dark"],
            steps["background_removed"],
            steps["ink"][y0:y1, x0:x1],
            steps["result"],
        ]
        answer = pred.predict_one(data)
        for c, img in enumerate(shown):
            ax = axes[r, c]
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        axes[r, -1].set_xlabel(f"predicted {answer.digit} ({100 * answer.confidence:.1f}%)")
        axes[r, 0].set_ylabel(kind.replace("_", " "), fontsize=8)
    fig.suptitle("lenet predict: from a photo to the 28x28 the network sees", fontsize=11)
    print(_save(fig, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
