"""Time the paper recipe's SDLM training loop per batch size, and its 500-image diagonal estimate.

python scripts/bench_sdlm.py [--data-dir data] [--model lenet5-1998] [--batches 1,4,8,16,32]

One thread (as each job of a 2-core ``lenet reproduce --jobs 2`` gets). Prints a markdown table of
training images/s and the seconds one 60,000-image pass would take (the loop alone: forward,
backward, SDLM step; the estimate is printed apart). Backs docs/training.md's choice of batch 8.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lenet.config import make_config
from lenet.data import load_split
from lenet.kernels import turned_off
from lenet.models import create_model, get_spec
from lenet.normalization import normalize
from lenet.ops import prepare_for_device
from lenet.optim import build_optimizer


def main() -> None:
    """Parse the flags, time the estimate and each batch size, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--model", default="lenet5-1998")
    ap.add_argument("--batches", default="1,4,8,16,32")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    cfg = make_config("paper", model=args.model)
    torch.manual_seed(0)
    model = create_model(args.model)
    prepare_for_device(model, torch.device("cpu"))
    full = load_split("train", args.data_dir)
    x = normalize(full.images[:4000], get_spec(args.model).normalization)
    y = full.labels[:4000]
    opt = build_optimizer(cfg, model.parameters(), torch.device("cpu"))
    t0 = time.perf_counter()
    with turned_off():  # as the engine estimates: torch.func cannot go through the fused kernels
        opt.estimate_diagonal(model, x[:500])
    print(f"{args.model}: 500-image estimate {time.perf_counter() - t0:.1f} s\n")
    print("| batch | images/s | one pass |\n| --- | --- | --- |")
    for bs in (int(b) for b in args.batches.split(",")):
        n = min(len(x), max(300, 250 * bs))  # ~1-3 s per batch size
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            loss = F.cross_entropy(model(x[i : i + bs]), y[i : i + bs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rate = n / (time.perf_counter() - t0)
        print(f"| {bs} | {rate:,.0f} | {60000 / rate:.0f} s |")


if __name__ == "__main__":
    main()
