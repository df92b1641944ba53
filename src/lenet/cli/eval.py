"""``lenet eval``: test-set metrics, confusion matrix and a gallery of mistakes for a checkpoint."""

from __future__ import annotations

import argparse
import json

from lenet.cli import add_data_dir, add_device, add_json, bounded
from lenet.config import DATASETS


def register(sub) -> None:
    """Add the ``eval`` verb."""
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on its test set",
        description="Loss, accuracy, per-class precision/recall and a confusion matrix on the test "
        "set of the checkpoint's dataset (MNIST or Fashion-MNIST); also the error-vs-rejection "
        "curve (how much must be refused, least confident first, for a given error); writes "
        "confusion.png, errors.png and rejection.png next to the checkpoint (or into --out). "
        "With --images DIR: the same on your own labelled images (DIR/<digit>/*.png or "
        "DIR/labels.csv with name,label), preprocessed as lenet predict does; errors.png then "
        "shows each mistake's original beside the 28x28 the network saw.",
    )
    p.add_argument("checkpoint", help="best.pt / last.pt, or a bare state_dict .pth from the note")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument(
        "--images",
        metavar="DIR",
        help="labelled image files instead of the test set: DIR/<digit>/* or DIR/labels.csv",
    )
    p.add_argument(
        "--workers",
        type=bounded(int, 1, 64),
        default=None,
        metavar="N",
        help="with --images: processes that preprocess (default as lenet predict)",
    )
    p.add_argument("--out", help="folder for confusion.png, errors.png and rejection.png")
    p.add_argument("--no-plots", action="store_true", help="skip the pictures")
    add_data_dir(p)
    p.add_argument(
        "--dataset", choices=DATASETS, help="default: the one the checkpoint was trained on"
    )
    add_device(p)
    add_json(p)
    p.set_defaults(func=run)


def format_report(r) -> str:
    """Human-readable text for an :class:`~lenet.evaluation.EvalReport`."""
    from lenet.data import get_dataset

    names = r.classes or [str(c) for c in range(len(r.confusion))]
    w = max(5, *(len(n) for n in names))  # the class column fits the longest name
    lines = [
        f"{r.model} on {get_dataset(r.dataset).title} {r.split} ({r.n:,} images): loss "
        f"{r.loss:.4f}  accuracy {100 * r.accuracy:.2f}%  ({r.errors} wrong)",
        "",
        f"{'class':>{w}}  precision  recall  support",
    ]
    for c, name in zip(r.per_class, names, strict=True):
        lines.append(
            f"{name:>{w}}  {100 * c['precision']:8.2f}%  {100 * c['recall']:5.2f}%  {c['support']:>7}"
        )
    # Columns are the label numbers (names do not fit a column); rows name the class when the
    # names are not the numbers themselves.
    digits = names == [str(c) for c in range(len(names))]
    rw = 6 if digits else w + 4
    lines += ["", "confusion matrix (rows actual, columns predicted):"]
    lines.append(" " * rw + "".join(f"{j:>6}" for j in range(len(r.confusion))))
    for i, row in enumerate(r.confusion):
        label = f"{i:>6}" if digits else f"{i} {names[i]}".ljust(rw)
        lines.append(label + "".join(f"{v:>6}" for v in row))
    if r.rejection:
        lines += ["", "error vs rejection (refusing the least confident first):"]
        lines.append(
            "  "
            + "  ".join(
                f"{100 * float(k):g}% rejected: {100 * v:.2f}% error"
                for k, v in r.rejection["error_at"].items()
            )
        )
        for k, v in r.rejection["rejection_for"].items():
            how = (
                f"{100 * v['rejected']:.2f}% rejected (--min-confidence {v['threshold']:.4f})"
                if v["threshold"] is not None
                else "not reachable"
            )
            lines.append(f"  {100 * float(k):g}% error needs {how}")
    for k, v in r.files.items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


def format_image_report(r) -> str:
    """Human-readable text for an :class:`~lenet.evaluation.ImageEvalReport`."""
    lines = [
        f"{r.model} on {r.folder} ({r.n:,} images): accuracy {100 * r.accuracy:.2f}%  "
        f"({r.errors} wrong, of which {r.unusable} unusable and {r.no_digit} with no digit found)",
        "",
        "digit  count  correct  accuracy  precision",
    ]
    for c in r.per_class:
        acc = f"{100 * c['recall']:7.2f}%" if c["count"] else "       -"
        lines.append(
            f"{c['class']:>5}  {c['count']:>5}  {c['correct']:>7}  {acc}  "
            f"{100 * c['precision']:8.2f}%"
        )
    lines += ["", "confusion matrix of the answered images (rows actual, columns predicted):"]
    lines.append(" " * 6 + "".join(f"{j:>6}" for j in range(len(r.confusion))))
    for i, row in enumerate(r.confusion):
        lines.append(f"{i:>6}" + "".join(f"{v:>6}" for v in row))
    unanswered = [m for m in r.mistakes if m["predicted"] is None]
    if unanswered:
        lines += ["", "not answered (counted as wrong):"]
        lines += [f"  {m['path']}: {m.get('error') or m.get('reason')}" for m in unanswered]
    for k, v in r.files.items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print text or JSON."""
    from lenet.config import TrainConfig
    from lenet.errors import LenetError
    from lenet.evaluation import evaluate

    if args.images is not None:
        # These choose the test set, which --images replaces: refuse rather than ignore them.
        given = [
            flag
            for flag, used in (
                ("--split", args.split != "test"),
                ("--dataset", args.dataset is not None),
                ("--data-dir", args.data_dir != TrainConfig.data_dir),
            )
            if used
        ]
        if given:
            raise LenetError(f"{', '.join(given)} choose the test set; --images replaces it")
        return _run_images(args)
    if args.workers is not None:
        raise LenetError("--workers is for --images (the test set is read from its IDX files)")

    r = evaluate(
        args.checkpoint,
        data_dir=args.data_dir,
        dataset=args.dataset,
        split=args.split,
        device=args.device,
        out_dir=args.out,
        plots=not args.no_plots,
    )
    print(json.dumps(r.to_dict()) if args.json else format_report(r))
    return 0


def _run_images(args: argparse.Namespace) -> int:
    """``--images DIR``: evaluate on labelled image files, print text or JSON."""
    from lenet.evaluation import evaluate_images
    from lenet.preprocess import quiet_bomb_warning

    quiet_bomb_warning()  # such images are counted as unusable instead
    r = evaluate_images(
        args.checkpoint,
        args.images,
        device=args.device,
        workers=args.workers,
        out_dir=args.out,
        plots=not args.no_plots,
    )
    print(json.dumps(r.to_dict()) if args.json else format_image_report(r))
    return 0
