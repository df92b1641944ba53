"""Make the reader's bundled piece networks (src/lenet/weights/lenet5-pieces.pt and
lenet5-pieces-context.pt); see lenet.bench.pieces.

    python scripts/train_piece_net.py --data-dir data [--view image|context] [--out PATH] [--overwrite]

``--view image`` (default) trains on each piece scaled up on its own, as the digit model sees
it; ``--view context`` on each piece within its group's full height
(:func:`lenet.reader.context_image`). The reader asks both.

Pieces of 4,000 strings per category of MNIST TRAINING digits (seed 100), cut by the reader's own
segmentation graph and labelled by overlap with the digits' boxes, train an 11-class
lenet5-relu for 8 epochs with one torch thread, every random choice seeded. It is measured on the pieces of 300 strings per category of MNIST TEST digits at seed
2 (neither the benchmark's seed 0 nor the tuning seed 1) and the figures are recorded in the
file's metrics with this command. Takes about 7 minutes on the 2-core box.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from lenet.bench.pieces import CLASSES, MODEL, piece_accuracy, piece_set, train_piece_net
from lenet.checkpoint import make_payload, save_checkpoint
from lenet.data import DEFAULT_DATA_DIR, load_split
from lenet.normalization import MNIST_STATS
from lenet.reader import VIEWS

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "lenet" / "weights"
COMMAND = "python scripts/train_piece_net.py --data-dir data"
TRAIN_STRINGS, TRAIN_SEED, EPOCHS = 4000, 100, 8
VAL_STRINGS, VAL_SEED = 300, 2


def main(argv: list[str] | None = None) -> int:
    """Generate the pieces, train, measure, write the checkpoint."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="MNIST folder")
    p.add_argument("--view", choices=sorted(VIEWS), default="image", help="the pieces' picture")
    p.add_argument("--out", type=Path, help=f"where to write (default {WEIGHTS}/<view's file>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a = p.parse_args(argv)
    a.out = a.out or WEIGHTS / VIEWS[a.view]
    command = COMMAND + (f" --view {a.view}" if a.view != "image" else "")
    if a.out.exists() and not a.overwrite:
        p.error(f"{a.out} exists; give --overwrite to replace it")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train = load_split("train", a.data_dir)
    x, y = piece_set(train.images.numpy(), train.labels.numpy(), TRAIN_STRINGS, TRAIN_SEED, a.view)
    print(
        f"{len(y)} training pieces ({(y == CLASSES - 1).mean():.0%} not one digit), "
        f"{time.perf_counter() - t0:.0f} s"
    )
    model = train_piece_net(x, y, epochs=EPOCHS)
    test = load_split("test", a.data_dir)
    vx, vy = piece_set(test.images.numpy(), test.labels.numpy(), VAL_STRINGS, VAL_SEED, a.view)
    metrics = piece_accuracy(model, vx, vy)
    print(metrics)
    payload = make_payload(
        model,
        MODEL,
        {"num_classes": CLASSES},
        MNIST_STATS,
        metrics={
            "test_pieces": metrics,
            "recipe": command,
            "train_pieces": int(len(y)),
            "view": a.view,
        },
    )
    save_checkpoint(a.out, payload)
    print(f"wrote {a.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
