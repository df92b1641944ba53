"""``lenet train``: train a model and keep the best checkpoint."""

from __future__ import annotations

import argparse
import json

from lenet.cli import add_data_dir
from lenet.config import AUGMENT, NORMALIZE, OPTIMIZERS, RECIPES, SCHEDULERS, SELECT_ON
from lenet.models import list_models


def register(sub) -> None:
    """Add the ``train`` verb."""
    p = sub.add_parser(
        "train", help="train a model",
        description="Train on MNIST; writes runs/<name>/ with config.json, metrics.csv, best.pt, "
        "last.pt and curves.png. Every flag left out comes from the recipe.",
    )  # fmt: skip
    p.add_argument(
        "--recipe",
        default="fast",
        choices=list(RECIPES),
        help="fast (default: >=99%% in a few epochs) or seed (the study note's recipe)",
    )
    p.add_argument(
        "--model", choices=list_models(), help="network (fast: lenet5-relu, seed: lenet5)"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate (peak LR for onecycle)")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--scheduler", choices=SCHEDULERS, help="none = the note's printed loop")
    p.add_argument("--step-size", type=int, help="StepLR period in epochs")
    p.add_argument("--gamma", type=float, help="StepLR decay factor")
    p.add_argument("--val-size", type=int, help="images held out from the end of the train set")
    p.add_argument("--select-on", choices=SELECT_ON, help="split that picks best.pt")
    p.add_argument("--normalize", choices=NORMALIZE, help="input scaling (default: the model's)")
    p.add_argument(
        "--augment", choices=AUGMENT,
        help="random distortions of each training batch: affine (rotate/scale/shear/shift, as "
        "the 1998 paper), elastic (Simard et al. 2003), both, or none (default)",
    )  # fmt: skip
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--limit", type=int, help="train on the first N images only (smoke tests)")
    add_data_dir(p)
    p.add_argument("--out", default="runs", help="parent folder of run folders (default: runs)")
    p.add_argument("--name", help="run folder name (default: <model>-<recipe>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="reuse an existing --name folder")
    p.add_argument("--resume", metavar="LAST_PT", help="continue a run from its last.pt")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    p.set_defaults(func=run)


def _fmt_epoch(row, epochs: int, sel: str) -> str:
    val = ""
    if row.val_acc is not None:
        val = f"  {sel} loss {row.val_loss:.4f} acc {100 * row.val_acc:6.2f}%"
    return (
        f"epoch {row.epoch:>3}/{epochs}  train loss {row.train_loss:.4f} acc "
        f"{100 * row.train_acc:6.2f}%{val}  lr {row.lr:.2e}  {row.seconds:5.1f}s  "
        f"{row.images_per_s:>9,.0f} img/s{'  *best' if row.best else ''}"
    )


def run(args: argparse.Namespace) -> int:
    """Build the config from recipe + flags, train, print one line per epoch."""
    from lenet.engine import train

    keys = ["model", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
            "scheduler", "step_size", "gamma", "val_size", "select_on", "normalize", "augment", "seed",
            "device", "threads", "limit", "name"]  # fmt: skip
    overrides = {k: getattr(args, k) for k in keys}
    if args.resume:
        # A resumed run keeps its own settings; only these may change.
        allowed = {"epochs", "device", "threads"}
        overrides = {k: v for k, v in overrides.items() if k in allowed}
    else:
        overrides.update(recipe=args.recipe, data_dir=args.data_dir, out=args.out)

    def on_epoch(row, res):
        if not args.json:
            sel = "test" if res.select_on == "test" else "val"
            print(_fmt_epoch(row, res.config.epochs, sel), flush=True)

    res = train(resume=args.resume, overwrite=args.overwrite, on_epoch=on_epoch, **overrides)
    summary = {
        "run_dir": str(res.run_dir), "best": str(res.best_path), "last": str(res.last_path),
        "best_epoch": res.best_epoch, "best_acc": res.best_acc, "select_on": res.select_on,
        "epochs": len(res.history),
    }  # fmt: skip
    if args.json:
        print(json.dumps(summary))
    else:
        acc = (
            f"{100 * res.best_acc:.2f}% {res.select_on} accuracy" if res.best_acc else "last epoch"
        )
        print(f"best: {res.best_path} (epoch {res.best_epoch}, {acc})")
        print(f"run folder: {res.run_dir} (metrics.csv, curves.png, last.pt)")
    return 0
