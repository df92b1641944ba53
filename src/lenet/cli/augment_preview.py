"""``lenet augment-preview``: a grid of original vs randomly distorted training digits."""

from __future__ import annotations

import argparse

from lenet.cli import add_data_dir
from lenet.config import AUGMENT_PARTS


def register(sub) -> None:
    """Add the ``augment-preview`` verb."""
    p = sub.add_parser(
        "augment-preview",
        description="Draws N training digits, each followed by COPIES random distortions of the "
        "kind `lenet train --augment KIND` applies.",
    )
    p.add_argument(
        "--kind",
        default="both",
        help=f"as `lenet train --augment`: both, or parts ({', '.join(AUGMENT_PARTS)}) joined "
        "by + (default: both)",
    )
    p.add_argument("--n", type=int, default=8, help="digits (rows), default 8")
    p.add_argument("--copies", type=int, default=6, help="distorted copies per digit, default 6")
    p.add_argument("--start", type=int, default=0, help="first training index (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="augment.png", help="PNG path (default: augment.png)")
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draw and print where the picture went."""
    from lenet.data import load_split
    from lenet.errors import LenetError
    from lenet.visualize import augment_preview

    if not 1 <= args.n <= 100 or not 1 <= args.copies <= 20 or args.start < 0:
        raise LenetError("--n must be 1..100, --copies 1..20 and --start not negative")
    train = load_split("train", args.data_dir)
    if args.start >= len(train):
        raise LenetError(f"--start must be below {len(train)} (the training set's size)")
    images = train.images[args.start : args.start + args.n]
    labels = train.labels[args.start : args.start + args.n]
    path = augment_preview(
        images, args.kind, args.out, copies=args.copies, seed=args.seed, labels=labels
    )
    print(f"picture: {path}")
    return 0
