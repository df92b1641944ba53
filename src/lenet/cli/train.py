"""``lenet train``: train a model and keep the best checkpoint.

One flag per :class:`lenet.config.TrainConfig` field, made from the field's metadata (help text,
choices); a flag left out is ``None``: the recipe decides.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

from lenet.cli import bounded
from lenet.config import (
    MAX_DIST_TIMEOUT_S,
    RECIPE_ALIASES,
    RECIPES,
    TrainConfig,
    flag_fields,
    make_config,
)
from lenet.errors import LenetError

# The settings a flag can set, in TrainConfig's order.
_SETTINGS = [f.name for f in flag_fields()]
# Flags forwarded as they are to each process that --nproc launches.
_FORWARD = ["recipe", *_SETTINGS, "resume", "dist_timeout"]
_TYPES = {"int": int, "float": float, "str": str}


class _LazyChoices(Sequence):
    """Choices computed on first use (the model names need torch: not for ``lenet --help``)."""

    def __init__(self, fn):
        self._fn, self._values = fn, None

    def _get(self) -> list:
        if self._values is None:
            self._values = list(self._fn())
        return self._values

    def __getitem__(self, i):
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())


def _defaults(name: str, default) -> str:
    """`` (default: X)``, or each recipe's value where the recipes differ."""
    per = {r: over.get(name, default) for r, over in RECIPES.items()}
    if len(set(map(repr, per.values()))) > 1:
        return " (" + ", ".join(f"{r}: {v}" for r, v in per.items()) + ")"
    return f" (default: {default})" if default != "" else ""


def add_setting_flags(p: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field, help and choices from the field's metadata."""
    for f in flag_fields():
        choices, metavar = f.metadata.get("choices"), None
        help = f.metadata["help"].replace("%", "%%")
        if callable(choices):
            # argparse lists choices when the flag is added unless it has a metavar; %(choices)s
            # lists them only when the help is shown.
            choices, metavar = _LazyChoices(choices), f.name.upper()
            help += ": %(choices)s"
        help += _defaults(f.name, f.default).replace("%", "%%")
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=_TYPES[f.type],
            choices=choices,
            metavar=metavar,
            help=help,
        )


def _recipes_help() -> str:
    """Each recipe of config.RECIPES with its model, dataset and epochs (so a new one shows up)."""
    parts = []
    for name, settings in RECIPES.items():
        cfg = replace(TrainConfig(), **settings)
        default = " (default)" if name == TrainConfig.recipe else ""
        parts.append(f"{name}{default} = {cfg.model}, {cfg.dataset}, {cfg.epochs} epochs")
    return "; ".join(parts)


def register(sub) -> None:
    """Add the ``train`` verb."""
    p = sub.add_parser(
        "train",
        help="train a model",
        description="Train on MNIST (or --dataset fashion-mnist); writes runs/<name>/ with "
        "config.json, metrics.csv, best.pt, last.pt and curves.png. Every flag left out comes "
        "from the recipe.",
    )
    recipe = {f.name: f for f in fields(TrainConfig)}["recipe"]
    p.add_argument(
        "--recipe",
        choices=[*RECIPES, *RECIPE_ALIASES],
        metavar="{" + ",".join(RECIPES) + "}",
        help=f"{recipe.metadata['help']}: {_recipes_help()}",
    )
    add_setting_flags(p)
    p.add_argument("--overwrite", action="store_true", help="reuse an existing --name folder")
    p.add_argument("--resume", metavar="LAST_PT", help="continue a run from its last.pt")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    d = p.add_argument_group(
        "distributed",
        "Data-parallel training: run under `torchrun --nproc-per-node N -m lenet train ...` "
        "(or use --nproc). --batch-size is the global batch, split evenly over the processes.",
    )
    d.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="launch N training processes on this machine through torchrun (gloo on CPU, "
        "NCCL on GPUs; CPU threads are split between them)",
    )
    d.add_argument(
        "--dist-timeout",
        type=bounded(float, 0.001, MAX_DIST_TIMEOUT_S),
        metavar="SECONDS",
        help="how long a process waits for a dead or hung peer before stopping with an error "
        "(default: $LENET_DIST_TIMEOUT or 300)",
    )
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


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: the same command under torchrun on this machine (one node, N processes)."""
    import torch

    from lenet import distributed

    n = args.nproc
    if n < 1:
        raise LenetError("--nproc must be at least 1")
    # One process per core on CPU, or per GPU: more only share them and wait on each other.
    cores, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    if n > max(cores, gpus):
        raise LenetError(
            f"--nproc {n} is more processes than this machine has CPU cores ({cores}) or GPUs "
            f"({gpus})"
        )
    if distributed.env_world_size() > 1:
        raise LenetError("--nproc launches torchrun itself; under torchrun leave it out")
    if not args.resume:  # the same checks every rank makes, before starting anything
        cfg = make_config(**{k: getattr(args, k) for k in ["recipe", *_SETTINGS]})
        distributed.check_global_batch(cfg.batch_size, distributed.DistContext(world_size=n))
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
    refuse the run folder the first one created. Its flags are the first attempt's, so they
    match the saved settings and the resume rules let them through.
    """
    from lenet import distributed

    if args.resume or distributed.restart_count() == 0 or not args.name:
        return
    last = Path(args.out or TrainConfig.out) / args.name / "last.pt"
    if last.is_file():
        args.resume = str(last)
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
    # Every given flag goes to the engine, which owns the rules (what a resume may change).
    overrides = {k: getattr(args, k) for k in ["recipe", *_SETTINGS]}

    def on_epoch(row, res):
        if main and not args.json:
            sel = "test" if res.select_on == "test" else "val"
            print(_fmt_epoch(row, res.config.epochs, sel), flush=True)

    try:
        res = train(
            resume=args.resume,
            overwrite=args.overwrite,
            on_epoch=on_epoch,
            dist_timeout=args.dist_timeout,
            **overrides,
        )
    except distributed.SameErrorOnEveryRank:
        if main:
            raise
        return 2  # rank 0 prints it
    if not main:
        return 0
    summary = {
        "run_dir": str(res.run_dir),
        "best": str(res.best_path),
        "last": str(res.last_path),
        "best_epoch": res.best_epoch,
        "best_acc": res.best_acc,
        "select_on": res.select_on,
        "epochs": len(res.history),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        acc = (
            f"{100 * res.best_acc:.2f}% {res.select_on} accuracy" if res.best_acc else "last epoch"
        )
        print(f"best: {res.best_path} (epoch {res.best_epoch}, {acc})")
        print(f"run folder: {res.run_dir} (metrics.csv, curves.png, last.pt)")
    return 0
