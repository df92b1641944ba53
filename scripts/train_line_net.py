"""Make the reader's bundled line network (src/lenet/weights/lenet-sdnn.pt); see lenet.bench.lines.

    python scripts/train_line_net.py --data-dir data [--out PATH] [--overwrite] [--strings N] [--epochs E]
        [--stride 2|4]

Lines of N strings per category of MNIST TRAINING digits (seeds 200 and 201, half each, made
by two processes), rendered as photos and found by the reader, train an SDNN with CTC and
frame targets for E epochs with one torch thread, every random choice seeded. It is measured on the lines of 300
strings per category of MNIST TEST digits at seed 2 (neither the benchmark's seed 0 nor the
tuning seed 1) and the figures are recorded in the file's metrics with this command.
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from lenet.bench.lines import line_accuracy, line_set, train_line_net
from lenet.checkpoint import make_payload, save_checkpoint
from lenet.data import DEFAULT_DATA_DIR, load_split
from lenet.linescan import LINE_NET_NAME, MODEL_NAME
from lenet.models.sdnn import SDNNConfig
from lenet.normalization import MNIST_STATS

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "lenet" / "weights"
COMMAND = "python scripts/train_line_net.py --data-dir data"
TRAIN_STRINGS, TRAIN_SEEDS, EPOCHS = 8000, (200, 201), 12
VAL_STRINGS, VAL_SEED = 300, 2


def _lines(args):
    split, data_dir, n, seed = args
    torch.set_num_threads(1)
    d = load_split(split, data_dir)
    return line_set(d.images.numpy(), d.labels.numpy(), n, seed)


def main(argv: list[str] | None = None) -> int:
    """Generate the lines, train, measure, write the checkpoint."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="MNIST folder")
    p.add_argument("--out", type=Path, default=WEIGHTS / LINE_NET_NAME, help="where to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--strings", type=int, default=TRAIN_STRINGS, help="strings per category")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="passes over the lines")
    p.add_argument(
        "--stride",
        type=int,
        choices=(2, 4),
        default=SDNNConfig.stride,
        help="line-image columns per frame (default %(default)s)",
    )
    a = p.parse_args(argv)
    if a.out.exists() and not a.overwrite:
        p.error(f"{a.out} exists; give --overwrite to replace it")
    command = COMMAND
    if a.strings != TRAIN_STRINGS:
        command += f" --strings {a.strings}"
    if a.epochs != EPOCHS:
        command += f" --epochs {a.epochs}"
    if a.stride != SDNNConfig.stride:
        command += f" --stride {a.stride}"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    half = a.strings // 2
    jobs = [("train", a.data_dir, half, s) for s in TRAIN_SEEDS]
    jobs.append(("test", a.data_dir, VAL_STRINGS, VAL_SEED))
    with ProcessPoolExecutor(2) as pool:
        parts = list(pool.map(_lines, jobs))
    xs, ys, spans = (parts[0][k] + parts[1][k] for k in range(3))
    vx, vy, _ = parts[2]
    print(f"{len(ys)} training lines, {time.perf_counter() - t0:.0f} s")
    cfg = SDNNConfig(stride=a.stride)
    model = train_line_net(xs, ys, spans, epochs=a.epochs, cfg=cfg)
    metrics = line_accuracy(model, vx, vy)
    print(metrics)
    payload = make_payload(
        model,
        MODEL_NAME,
        cfg.to_dict(),
        MNIST_STATS,
        metrics={"test_lines": metrics, "recipe": command, "train_lines": len(ys)},
    )
    save_checkpoint(a.out, payload)
    print(f"wrote {a.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
