"""``lenet predict``: digits in your own images (photos, scans, drawings), MNIST-style preprocessed."""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import json
import sys
from pathlib import Path

from lenet.cli import (
    add_backend,
    add_device,
    add_image_inputs,
    add_min_confidence,
    add_top_k,
    bounded,
)

# Files taken from folders (explicitly named files are tried whatever their extension).
from lenet.config import IMAGE_SUFFIXES


def register(sub) -> None:
    """Add the ``predict`` verb."""
    p = sub.add_parser(
        "predict",
        description="Predict handwritten digits in image files (PNG, JPEG, BMP, GIF, TIFF, WebP, "
        "...), folders (recursively), globs, or '-' for one image on stdin. Each image is made "
        "MNIST-like first (ink polarity, background, crop, 20 px box, centre of mass). Uses the "
        "bundled pretrained weights (lenet5-ensemble) unless --model is given. Exits 1 at the "
        "end if any input could not be used.",
    )
    add_image_inputs(p)
    add_top_k(p, help="how many best classes to list (1-10, default 3)")
    p.add_argument(
        "--format",
        choices=["table", "json", "csv"],
        default="table",
        help="table for people (default), json (one object per line), csv",
    )
    p.add_argument(
        "--save-preprocessed", metavar="DIR", help="write the 28x28 the network saw, as PNG"
    )
    add_min_confidence(
        p, help='answer "digit": null, "reason": "unsure" when the top probability is below P'
    )
    p.add_argument(
        "--workers",
        type=bounded(int, 1, 64),
        default=None,
        metavar="N",
        help="processes that decode and preprocess images (default: one per core when there "
        "are 256 files or more, else none)",
    )
    add_backend(p)
    add_device(p)
    p.set_defaults(func=run)


def expand_paths(args: list[str]) -> list[tuple[str, object]]:
    """PATH arguments -> [(name, source)]: files, folders (recursive, image suffixes), globs, '-'.

    A name that matches nothing stays in the list as itself, so it gets its own error line.
    """
    out: list[tuple[str, object]] = []
    stdin_used = False
    for a in args:
        if a == "-":
            if stdin_used:
                continue
            stdin_used = True
            out.append(("-", sys.stdin.buffer.read()))
            continue
        p = Path(a)
        if p.is_dir():
            files = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            out.extend((str(f), f) for f in files)
        elif not p.exists() and glob.has_magic(a):
            hits = sorted(glob.glob(a, recursive=True))
            files = [Path(h) for h in hits if Path(h).is_file()]
            out.extend((str(f), f) for f in files) if files else out.append((a, p))
        else:
            out.append((a, p))
    return out


def _table_row(d: dict, name_width: int) -> str:
    name = d["path"].ljust(name_width)
    if "error" in d:
        return f"{name}  error: {d['error']}"
    digit = "-" if d["digit"] is None else str(d["digit"])
    conf = "" if d["confidence"] is None else f"{100 * d['confidence']:6.2f}%"
    top = "  ".join(f"{k}:{100 * p:.1f}%" for k, p in d["top_k"])
    reason = f"  ({d['reason']})" if d.get("reason") else ""
    return f"{name}  {digit:>5}  {conf:>7}  {top}{reason}"


def _save_png(folder: Path, name: str, used: set[str], data: bytes) -> Path:
    """Write ``data`` as ``folder/<stem>.png`` under a name no file has: an existing file (an
    input photo, an earlier run's output) is never replaced; the next free ``<stem>-N.png`` is
    taken instead (:func:`lenet.fileio.create_unique`)."""
    from lenet.fileio import create_unique, safe_stem

    return create_unique(folder, safe_stem(name), data, used)


def run(args: argparse.Namespace) -> int:
    """Predict every input and print one line (or row, or JSON object) per input."""
    from lenet.errors import LenetError
    from lenet.parallel import start_pool
    from lenet.preprocess import quiet_bomb_warning

    quiet_bomb_warning()  # such images get their one "image too large" line instead
    inputs = expand_paths(args.paths)
    if not inputs:
        raise LenetError("no image files found in the given paths")
    pool = start_pool(args.workers, len(inputs))
    # A bad --model, Ctrl-C, a full disk: leaving the block drops the queued work at once.
    with pool if pool is not None else contextlib.nullcontext():
        # The workers start on the first chunks now, while this process imports torch and loads
        # the model (about 1.5 s here): that start-up is no longer idle time.
        sources = [src for _, src in inputs]
        work = pool.imap(sources) if pool is not None else sources
        failed = _answer_all(args, inputs, work, pool)
    if failed:
        print(f"lenet: {failed} of {len(inputs)} inputs could not be used", file=sys.stderr)
        return 1
    return 0


def _answer_all(args: argparse.Namespace, inputs: list, work, pool) -> int:
    """Load the model, answer every input in order, print; returns how many were unusable."""
    from tqdm import tqdm

    from lenet.predictor import Predictor, png_bytes

    if pool is not None:
        import torch

        # The network's share is tiny next to preprocessing; more torch threads would only
        # spin on the cores the workers need.
        torch.set_num_threads(1)
    predictor = Predictor(
        args.model, device=args.device, backend=args.backend, workers=1, pool=pool
    )
    save_dir = Path(args.save_preprocessed) if args.save_preprocessed else None
    used: set[str] = set()
    width = min(max(len(n) for n, _ in inputs), 60)

    writer = None
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(
            ["path", "digit", "confidence", "top_k", "reason", "error"]
            + [f"p{i}" for i in range(10)]
        )
    elif args.format == "table":
        print(f"{'path'.ljust(width)}  digit  confid.  top {args.top_k}")
    failed = saved = 0
    bar = tqdm(
        total=len(inputs),
        unit="img",
        disable=None if len(inputs) > predictor.batch_size else True,
        file=sys.stderr,
        leave=False,
    )
    answers = predictor.predict_iter(work, top_k=args.top_k, min_confidence=args.min_confidence)
    for n, ((name, _), pr) in enumerate(zip(inputs, answers, strict=True), 1):
        pr.source = name
        failed += pr.error is not None
        if save_dir is not None and pr.preprocessed is not None:
            _save_png(save_dir, name, used, png_bytes(pr.preprocessed))
            saved += 1
        d = pr.to_dict()
        if args.format == "json":
            print(json.dumps(d))
        elif writer is not None:
            probs = d.get("probabilities") or [""] * 10
            writer.writerow(
                [
                    d["path"],
                    d.get("digit", ""),
                    d.get("confidence", ""),
                    " ".join(f"{k}:{p}" for k, p in d.get("top_k", [])),
                    d.get("reason", ""),
                    d.get("error", ""),
                    *probs,
                ]
            )
        else:
            print(_table_row(d, width))
        if n % predictor.batch_size == 0:  # results stream out batch by batch
            sys.stdout.flush()
            bar.update(predictor.batch_size)
    bar.close()
    if saved:
        print(f"lenet: {saved} preprocessed 28x28 images written to {save_dir}", file=sys.stderr)
    return failed
