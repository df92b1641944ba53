"""``lenet train``: train a model and keep the best checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from lenet.cli import add_data_dir
from lenet.config import (
    AUGMENTS,
    NORMALIZE,
    OPTIMIZERS,
    RECIPES,
    SCHEDULERS,
    SELECT_ON,
    make_config,
)
from lenet.errors import LenetError
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
        "--augment", choices=AUGMENTS,
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
    d = p.add_argument_group(
        "distributed",
        "Data-parallel training: run under `torchrun --nproc-per-node N -m lenet train ...` "
        "(or use --nproc). --batch-size is the global batch, split evenly over the processes.",
    )
    d.add_argument(
        "--nproc", type=int, metavar="N",
        help="launch N training processes on this machine through torchrun (gloo on CPU, "
        "NCCL on GPUs; CPU threads are split between them)",
    )  # fmt: skip
    d.add_argument(
        "--dist-timeout", type=float, metavar="SECONDS",
        help="how long a process waits for a dead or hung peer before stopping with an error "
        "(default: $LENET_DIST_TIMEOUT or 300)",
    )  # fmt: skip
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


# The TrainConfig settings a flag can set (None = not given: the recipe decides).
_SETTINGS = ["model", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
             "scheduler", "step_size", "gamma", "val_size", "select_on", "normalize", "augment",
             "seed", "device", "threads", "limit", "name"]  # fmt: skip
# What a resumed run may change: everything else is the run's own, saved in last.pt.
_RESUMABLE = {"epochs", "device", "threads"}
# Flags forwarded as they are to each process that --nproc launches.
_FORWARD = ["recipe", *_SETTINGS, "data_dir", "out", "resume", "dist_timeout"]


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: the same command under torchrun on this machine (one node, N processes)."""
    from lenet import distributed

    n = args.nproc
    if n < 1:
        raise LenetError("--nproc must be at least 1")
    if distributed.env_world_size() > 1:
        raise LenetError("--nproc launches torchrun itself; under torchrun leave it out")
    if not args.resume:  # the same check every rank makes, before starting anything
        batch = args.batch_size or make_config(args.recipe).batch_size
        distributed.check_global_batch(batch, distributed.DistContext(world_size=n))
    argv = ["-m", "lenet"] + (["-q"] if args.quiet else []) + ["train"]
    for key in _FORWARD:
        value = getattr(args, key)
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    argv += [f"--{flag}" for flag in ("overwrite", "json") if getattr(args, flag)]
    if args.threads is None and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores instead of oversubscribing them (the workers inherit this).
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    logging.getLogger(__name__).info("launching %d processes (torchrun, one node)", n)
    return distributed.launch_local(n, [sys.executable, *argv])


def _restart_resume(args: argparse.Namespace) -> None:
    """Under ``torchrun --max-restarts``, a restarted worker group continues from ``last.pt``.

    torchrun re-runs the same command after a failure; without this the second attempt would
    refuse the run folder the first one created.
    """
    from lenet import distributed

    if args.resume or distributed.restart_count() == 0 or not args.name:
        return
    last = Path(args.out) / args.name / "last.pt"
    if last.is_file():
        args.resume = str(last)
        args.restarted = True  # the flags are the first attempt's: not a change of settings
    else:  # the first attempt died before finishing an epoch: its folder is ours to reuse
        args.overwrite = True


def run(args: argparse.Namespace) -> int:
    """Build the config from recipe + flags, train, print one line per epoch."""
    if args.nproc is not None and args.nproc != 1:
        return _launch(args)
    from lenet import distributed
    from lenet.engine import train

    _restart_resume(args)
    main = distributed.is_main()
    if not main:  # only rank 0 talks; the others still report their errors
        logging.getLogger().setLevel(logging.WARNING)

    overrides = {k: getattr(args, k) for k in _SETTINGS}
    if args.resume:
        changed = [k for k, v in overrides.items() if v is not None and k not in _RESUMABLE]
        if changed and not getattr(args, "restarted", False):
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in changed)
            raise LenetError(
                f"--resume continues a run with its own settings; it cannot change {flags} "
                f"(only --epochs, --device, --threads)"
            )
        overrides = {k: v for k, v in overrides.items() if k in _RESUMABLE}
    else:
        overrides.update(recipe=args.recipe, data_dir=args.data_dir, out=args.out)

    def on_epoch(row, res):
        if main and not args.json:
            sel = "test" if res.select_on == "test" else "val"
            print(_fmt_epoch(row, res.config.epochs, sel), flush=True)

    try:
        res = train(
            resume=args.resume, overwrite=args.overwrite, on_epoch=on_epoch,
            dist_timeout=args.dist_timeout, **overrides,
        )  # fmt: skip
    except distributed.SameErrorOnEveryRank:
        if main:
            raise
        return 2  # rank 0 prints it
    if not main:
        return 0
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
