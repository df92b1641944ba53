"""``lenet bench``: run the performance benchmarks, print a table, optionally write JSON."""

from __future__ import annotations

import argparse
import json

from lenet.cli import add_data_dir, add_device


def register(sub) -> None:
    """Add the ``bench`` verb."""
    from lenet.bench.suite import BENCHMARKS

    p = sub.add_parser(
        "bench",
        description="Runs the benchmarks side by side and prints one table: "
        + ", ".join(BENCHMARKS)
        + ". Figures, not pass/fail: 'met' compares with the targets "
        "for a 2-core CPU (docs/benchmarks.md). A full run takes a few minutes.",
    )
    p.add_argument("--json", metavar="OUT", help="also write the results (and the machine) here")
    p.add_argument(
        "--only", nargs="+", metavar="NAME", choices=BENCHMARKS, help="run only these benchmarks"
    )
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke test in seconds")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: PyTorch's)")
    p.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help="models for train-throughput (default: every registered model)",
    )
    add_data_dir(p)
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run, print each benchmark's seconds as it finishes, then the table; write JSON."""
    from lenet.bench.suite import format_table, run_benchmarks
    from lenet.fileio import atomic_write_text

    def progress(name: str, result: dict) -> None:
        if not args.quiet:
            print(f"{name}: done in {result['seconds']:.1f} s", flush=True)

    record = run_benchmarks(
        args.only,
        data_dir=args.data_dir,
        device=args.device,
        threads=args.threads,
        quick=args.quick,
        models=args.models,
        on_result=progress,
    )
    print(format_table(record))
    if args.json:
        atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
