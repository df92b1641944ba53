"""``lenet read``: whole numbers (zip codes, amounts, phone numbers) in your own images."""

from __future__ import annotations

import argparse
import csv
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


def register(sub) -> None:
    """Add the ``read`` verb."""
    p = sub.add_parser(
        "read",
        description="Read a line of handwritten digits (a zip code, an amount, a phone number) "
        "in image files, folders (recursively), globs, or '-' for one image on stdin: one "
        "answer per image with the string, each character's box, digit and confidence. "
        "Touching digits are cut where the network reads the pieces best. Uses the bundled "
        "pretrained weights (lenet5-ensemble) unless --model is given. Exits 1 at the end if "
        "any input could not be used.",
    )
    add_image_inputs(p)
    p.add_argument(
        "--format",
        choices=["table", "json", "csv"],
        default="table",
        help="table for people (default), json (one object per line), csv",
    )
    add_min_confidence(p, help='characters below P read "?" and the string is marked unsure')
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--digits", type=bounded(int, 1, 64), metavar="N", help="the string has exactly N digits"
    )
    which.add_argument(
        "--pattern",
        metavar="REGEX",
        help=r"the whole string matches this regular expression (e.g. '\d{5}', '\d{3}-\d{4}')",
    )
    add_top_k(p, help="how many best classes to list per character (1-10, default 3)")
    p.add_argument(
        "--save-segments",
        metavar="DIR",
        help="write each character's 28x28 as PNG (existing files are never overwritten)",
    )
    p.add_argument(
        "--pieces",
        metavar="CKPT",
        help="the piece network that tells a whole digit from a piece, on each piece scaled up "
        "on its own (default: the bundled one; scripts/train_piece_net.py makes one)",
    )
    p.add_argument(
        "--context-pieces",
        metavar="CKPT",
        help="the piece network that sees each piece within its group's height (default: the "
        "bundled one; scripts/train_piece_net.py --view context makes one)",
    )
    p.add_argument(
        "--line-net",
        metavar="CKPT",
        help="the line network (SDNN) swept along the whole line for a second opinion on every "
        "piece (default: the bundled one; scripts/train_line_net.py makes one)",
    )
    p.add_argument(
        "--no-line-net",
        action="store_true",
        help="read without the line network (pieces and piece networks only; faster)",
    )
    p.add_argument(
        "--second-opinion",
        metavar="CKPT",
        action="append",
        help="a digit network whose vote is mixed in on every character that stands whole on "
        "its own; repeat for several (default: the bundled lenet5-plus network)",
    )
    p.add_argument(
        "--no-second-opinion",
        action="store_true",
        help="read whole characters with the digit model (--model) and the reader's networks only",
    )
    add_backend(p)
    add_device(p)
    p.set_defaults(func=run)


def _table_row(d: dict, width: int) -> str:
    name = d["path"].ljust(width)
    if "error" in d:
        return f"{name}  error: {d['error']}"
    if d.get("text") is None:
        return f"{name}  {'-':>12}  {'':>7}  ({d.get('reason')})"
    conf = f"{100 * d['confidence']:6.2f}%"
    chars = " ".join(
        c["char"] if c["confidence"] is None else f"{c['char']}:{100 * c['confidence']:.0f}%"
        for c in d["characters"]
    )
    unsure = "  (unsure)" if d["unsure"] else ""
    return f"{name}  {d['text']:>12}  {conf:>7}  {chars}{unsure}"


def _csv_row(d: dict) -> list:
    chars = d.get("characters") or []
    return [
        d["path"],
        d.get("text") or "",
        "" if d.get("confidence") is None else d["confidence"],
        d.get("unsure", ""),
        d.get("reason", ""),
        d.get("error", ""),
        " ".join("" if c["confidence"] is None else str(c["confidence"]) for c in chars),
        " ".join(",".join(map(str, c["box"])) for c in chars),
    ]


def _save_segments(folder: Path, name: str, reading, used: set[str]) -> int:
    """Each character's 28x28 as ``<image stem>-<index>.png``; never over an existing file."""
    from lenet.fileio import create_unique, safe_stem
    from lenet.predictor import png_bytes

    stem = safe_stem(name)
    n = 0
    for i, c in enumerate(reading.characters):
        if c.image is not None:
            create_unique(folder, f"{stem}-{i}", png_bytes(c.image), used)
            n += 1
    return n


def run(args: argparse.Namespace) -> int:
    """Read every input and print one line (or row, or JSON object) per input."""
    import torch

    from lenet.cli.predict import expand_paths
    from lenet.errors import LenetError
    from lenet.preprocess import quiet_bomb_warning
    from lenet.reader import Reader, check_constraint

    check_constraint(args.digits, args.pattern)  # a bad pattern: one line, before the model
    if args.no_line_net and args.line_net:
        raise LenetError("give --line-net or --no-line-net, not both")
    if args.no_second_opinion and args.second_opinion:
        raise LenetError("give --second-opinion or --no-second-opinion, not both")
    quiet_bomb_warning()
    inputs = expand_paths(args.paths)
    if not inputs:
        raise LenetError("no image files found in the given paths")
    save_dir = Path(args.save_segments) if args.save_segments else None
    if save_dir is not None and save_dir.exists() and not save_dir.is_dir():
        raise LenetError(f"--save-segments {save_dir}: exists and is not a folder")
    torch.set_num_threads(1)  # one small image at a time: more threads only spin
    reader = Reader(
        args.model,
        device=args.device,
        backend=args.backend,
        pieces=args.pieces,
        context_pieces=args.context_pieces,
        line_net=False if args.no_line_net else args.line_net,
        second_opinion=False if args.no_second_opinion else args.second_opinion,
    )
    width = min(max(len(n) for n, _ in inputs), 60)
    writer = None
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(
            ["path", "text", "confidence", "unsure", "reason", "error", "char_confidences", "boxes"]
        )
    elif args.format == "table":
        print(f"{'path'.ljust(width)}  {'text':>12}  confid.  characters")
    failed = saved = 0
    used: set[str] = set()
    for name, src in inputs:
        r = reader.read_one(
            src,
            digits=args.digits,
            pattern=args.pattern,
            min_confidence=args.min_confidence,
            top_k=args.top_k,
        )
        r.source = name
        failed += r.error is not None
        if save_dir is not None and r.error is None:
            saved += _save_segments(save_dir, name, r, used)
        d = r.to_dict()
        if args.format == "json":
            print(json.dumps(d))
        elif writer is not None:
            writer.writerow(_csv_row(d))
        else:
            print(_table_row(d, width))
    if saved:
        print(f"lenet: {saved} character images written to {save_dir}", file=sys.stderr)
    if failed:
        print(f"lenet: {failed} of {len(inputs)} inputs could not be used", file=sys.stderr)
        return 1
    return 0
