"""``lenet reproduce``: train the LeNet family against the 1998 paper and write docs/reproduction.md."""

from __future__ import annotations

import argparse
import json

from lenet.cli import add_data_dir
from lenet.config import DEVICES


def register(sub) -> None:
    """Add the ``reproduce`` verb."""
    from lenet.reproduce import ROW_KEYS

    p = sub.add_parser(
        "reproduce",
        help="train lenet1/4/5 variants and compare with the 1998 paper",
        description="Trains every row (" + ", ".join(ROW_KEYS) + ") --seeds times on all 60,000 "
        "training images, scores each last epoch on the test set and writes OUT/reproduction.md "
        "and OUT/reproduction.json (paper error vs our mean ± std, params, epochs, time, machine). "
        "--quick: 1 seed, 1 epoch on 2,000 images, written to reproduction-quick.* instead.",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 1 short epoch")
    p.add_argument("--only", help="comma-separated row keys to run (default: all)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: PyTorch's)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train this many runs at once in worker processes (default 1; use several "
        "on a GPU or a many-core machine)",
    )
    p.add_argument(
        "--update",
        action="store_true",
        help="re-run only the --only rows and replace them in the existing report",
    )
    p.add_argument("--out", default="docs", help="folder for the report (default: docs)")
    p.add_argument("--runs", default="runs/reproduce", help="folder for the training runs")
    add_data_dir(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the rows, printing one line per finished run."""
    from lenet.reproduce import reproduce

    def on_run(row, r):
        if not args.json:
            print(
                f"{row.key:<26} seed {r['seed']}  test error {r['test_error']:5.2f}%  "
                f"({r['epochs']} epochs, {r['train_seconds']:.0f}s)",
                flush=True,
            )

    rows = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    rep = reproduce(
        seeds=args.seeds,
        quick=args.quick,
        rows=rows,
        out_dir=args.out,
        runs_dir=args.runs,
        data_dir=args.data_dir,
        device=args.device,
        threads=args.threads,
        jobs=args.jobs,
        update=args.update,
        on_run=on_run,
    )
    if args.json:
        print(json.dumps(rep))
    else:
        print(f"report: {rep['files'][0]} (and {rep['files'][1]})")
    return 0
