"""The training engine: in-memory MNIST, one epoch loop for every model, checkpoints and resume."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from lenet import distributed as dist
from lenet.augment import make_augmenter
from lenet.checkpoint import clean_state_dict, make_payload, read_checkpoint, save_checkpoint
from lenet.config import TrainConfig, make_config, validate
from lenet.data import ensure_data, load_split
from lenet.errors import LenetError
from lenet.fileio import atomic_write_text
from lenet.models import create_model, get_spec, model_config
from lenet.normalization import MNIST_STATS, TOTENSOR, Normalization, normalize
from lenet.ops import prepare_for_device as optimize_model
from lenet.runtime import predict_logits, resolve_device

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- setup helpers


def resolve_normalization(cfg: TrainConfig) -> Normalization:
    """The input scaling a run trains with (saved into its checkpoints)."""
    if cfg.normalize == "totensor":
        return TOTENSOR
    if cfg.normalize == "mnist":
        return MNIST_STATS
    return get_spec(cfg.model).normalization


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: a pure function of (seed, epoch), so resume and
    every distributed rank agree on it without sharing RNG state."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def build_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW from the config.

    Uses PyTorch's fused (one kernel for all parameters) implementation where this torch build
    has one for the parameters' device: same update rule, ~5% faster steps for LeNet on CPU.
    """
    params = list(params)
    if cfg.optimizer == "sgd":
        cls, kw = torch.optim.SGD, dict(momentum=cfg.momentum)
    else:
        cls, kw = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW), {}
    try:
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device/version
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)


def build_scheduler(
    cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, bool]:
    """The LR schedule and whether it steps per batch (True) or per epoch (False)."""
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma), False
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "onecycle" and total >= 4:  # fewer steps cannot hold a warm-up and a decay
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
            pct_start=max(0.25, 2 / total),
        )  # fmt: skip
        return sched, True
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=cfg.epochs * steps_per_epoch
        ), True
    return None, False


# ---------------------------------------------------------------------------- the run


@dataclass
class EpochResult:
    """One line of ``metrics.csv``."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    lr: float
    seconds: float
    images_per_s: float
    best: bool


@dataclass
class TrainResult:
    """What :func:`train` produced: the run folder, its checkpoints and its history."""

    run_dir: Path
    best_path: Path
    last_path: Path
    best_acc: float | None
    best_epoch: int | None
    select_on: str
    history: list[EpochResult] = field(default_factory=list)
    config: TrainConfig | None = None


METRIC_FIELDS = [f for f in EpochResult.__dataclass_fields__]


def _new_run_dir(cfg: TrainConfig, overwrite: bool) -> Path:
    if cfg.name:
        run_dir = Path(cfg.out) / cfg.name
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            raise LenetError(
                f"run folder {run_dir} already exists; use --resume {run_dir}/last.pt, "
                "another --name, or --overwrite"
            )
        return run_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.out) / f"{cfg.model}-{cfg.recipe}-{stamp}"
    run_dir, k = base, 2
    while run_dir.exists():
        run_dir, k = Path(f"{base}-{k}"), k + 1
    return run_dir


def _write_metrics(run_dir: Path, history: list[EpochResult]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in history:
        w.writerow(asdict(r))
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_epoch: Callable[[EpochResult, TrainResult], None] | None = None,
    dist_timeout: float | None = None,
    **overrides,
) -> TrainResult:
    """Train a model (``lenet train``): returns the run folder with best.pt / last.pt / curves.

    ``config`` or ``recipe=...`` plus keyword overrides pick the settings; ``resume`` continues a
    run from its ``last.pt`` (overrides such as ``epochs`` or ``device`` still apply).
    Under torchrun it trains data-parallel (see :mod:`lenet.distributed`; ``dist_timeout`` bounds
    every collective); only rank 0 writes files.
    """
    state = None
    if resume is not None:
        state = read_checkpoint(resume)
        if "optimizer" not in state or "train_config" not in state:
            raise LenetError(
                f"{resume}: not a last.pt written by lenet train (cannot resume from it)"
            )
        cfg = TrainConfig.from_dict(state["train_config"])
        saved_epochs = cfg.epochs
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        validate(cfg)
        if cfg.epochs != saved_epochs and cfg.scheduler in ("onecycle", "cosine"):
            # These schedules are laid out over the run's total steps when it starts.
            raise LenetError(
                f"{resume}: a {cfg.scheduler} schedule is fixed for {saved_epochs} epochs when "
                "the run starts; resume without --epochs, or start a new run"
            )
        run_dir = Path(resume).parent
    else:
        if config is None:
            config = make_config(**overrides)
        else:
            config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
        cfg = config
        validate(cfg)
        run_dir = None  # chosen below by rank 0 alone: ranks may start in different seconds

    # [distributed] join torchrun's process group (a world of one without torchrun); rank 0
    # names the run folder; --batch-size stays the global batch.
    ctx = dist.setup(resolve_device(cfg.device), dist_timeout)
    if run_dir is None:
        run_dir = dist.from_main(ctx, lambda: _new_run_dir(cfg, overwrite))
    dist.check_global_batch(cfg.batch_size, ctx)
    progress = progress and ctx.is_main

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Denormal floats make fp32 CPU training several times slower (sigmoid/avg-pool tails).
    torch.set_flush_denormal(True)
    device = ctx.device
    norm = resolve_normalization(cfg)

    # Data: each split loaded once, normalized once, resident on the device.
    # [distributed] one process per machine fetches MNIST when it is missing; the rest wait.
    dist.once_per_machine(ctx, lambda: ensure_data(cfg.data_dir, cfg.dataset))
    full = load_split("train", cfg.data_dir, dataset=cfg.dataset)
    n_train = len(full) - cfg.val_size
    if n_train <= 0:
        raise LenetError(f"--val-size {cfg.val_size} leaves no training images (of {len(full)})")
    n_used = min(cfg.limit, n_train) if cfg.limit else n_train
    x_train = normalize(full.images[:n_used], norm).to(device)
    y_train = full.labels[:n_used].to(device)
    if cfg.select_on == "test":
        sel = load_split("test", cfg.data_dir, dataset=cfg.dataset)
        x_sel, y_sel = normalize(sel.images, norm).to(device), sel.labels.to(device)
    elif cfg.val_size:
        x_sel = normalize(full.images[n_train:], norm).to(device)
        y_sel = full.labels[n_train:].to(device)
    else:
        x_sel = y_sel = None
    if x_sel is not None:  # [distributed] each rank validates its part; sums are reduced
        x_sel, y_sel = dist.shard(x_sel, ctx), dist.shard(y_sel, ctx)

    torch.manual_seed(cfg.seed)
    mcfg = model_config(cfg.model)
    model = create_model(cfg.model, **mcfg).to(device)
    optimize_model(model, device)  # same math; CPU: channels-last + GEMM-shaped c5
    opt = build_optimizer(cfg, model.parameters())
    steps_per_epoch = -(-n_used // cfg.batch_size)
    sched, per_step = build_scheduler(cfg, opt, steps_per_epoch)

    result = TrainResult(
        run_dir, run_dir / "best.pt", run_dir / "last.pt", None, None, cfg.select_on, [], cfg
    )
    start_epoch = 0
    if state is not None:
        model.load_state_dict(clean_state_dict(state["state_dict"]))
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        result.history = [EpochResult(**r) for r in state.get("history", [])]
        result.best_acc = state.get("best", {}).get("acc")
        result.best_epoch = state.get("best", {}).get("epoch")
        log.info("resuming %s from epoch %d", run_dir, start_epoch)
    if start_epoch >= cfg.epochs:
        raise LenetError(
            f"{resume}: already trained {start_epoch} epochs; pass --epochs > {start_epoch}"
        )

    net = dist.wrap_model(model, ctx)  # [distributed] DDP; `model` stays the one saved
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    log.info(
        "training %s (%s recipe) on %s: %d train images, select on %s -> %s",
        cfg.model, cfg.recipe, device, n_used, cfg.select_on, run_dir,
    )  # fmt: skip

    from tqdm import tqdm

    def payload(epoch: int, metrics: dict) -> dict:
        return make_payload(
            model, cfg.model, mcfg, norm,
            epoch=epoch, metrics=metrics, train_config=cfg.to_dict(),
        )  # fmt: skip

    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            perm = epoch_permutation(n_used, cfg.seed, epoch).to(device)
            augment = make_augmenter(cfg.augment, cfg.seed, epoch)
            # Dropout's randomness: a function of (seed, epoch, rank), so resume is exact and
            # DDP ranks draw different masks.
            torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + ctx.rank)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            lr = opt.param_groups[0]["lr"]
            t0 = time.perf_counter()
            bar = tqdm(
                total=n_used, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="img", unit_scale=True,
                leave=False, disable=None if progress else True, mininterval=0.5,
            )  # fmt: skip
            for i in range(0, n_used, cfg.batch_size):
                gidx = perm[i : i + cfg.batch_size]  # the global batch
                idx = dist.shard(gidx, ctx)  # [distributed] this rank's disjoint part of it
                if augment is None:
                    xb = x_train[idx]
                else:  # distort the global batch, keep this rank's part: N ranks = 1 process
                    xb = dist.shard(augment(x_train[gidx]), ctx)
                yb = y_train[idx]
                out = net(xb)
                loss = dist.batch_loss(out, yb, len(gidx), ctx)  # mean over the global batch
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if per_step:
                    sched.step()
                loss_sum += loss.detach() * (len(gidx) / ctx.world_size)  # this rank's sum
                correct += (out.detach().argmax(1) == yb).sum()
                bar.update(len(gidx))
            bar.close()
            if sched is not None and not per_step:
                sched.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            if per_step:
                lr = opt.param_groups[0]["lr"]

            val_loss = val_acc = None
            if x_sel is not None:
                val_loss, val_acc = dist.reduced_loss_and_accuracy(
                    predict_logits(model, x_sel, cfg.eval_batch_size), y_sel, ctx
                )
            train_loss_sum, train_correct = dist.sum_values(ctx, loss_sum, correct)
            # "last": every epoch replaces best.pt; best_acc is then that epoch's val (or None).
            is_best = (
                cfg.select_on == "last" or result.best_acc is None or val_acc > result.best_acc
            )
            row = EpochResult(
                epoch + 1, train_loss_sum / n_used, train_correct / n_used, val_loss, val_acc,
                lr, seconds, n_used / seconds, is_best,
            )  # fmt: skip
            result.history.append(row)
            metrics = asdict(row)
            if is_best:
                result.best_acc, result.best_epoch = val_acc, epoch + 1
            if ctx.is_main:  # [distributed] rank 0 alone writes files
                if is_best:
                    save_checkpoint(result.best_path, payload(epoch + 1, metrics))
                save_checkpoint(
                    result.last_path,
                    {
                        **payload(epoch + 1, metrics),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict() if sched is not None else None,
                        "best": {"acc": result.best_acc, "epoch": result.best_epoch},
                        "history": [asdict(r) for r in result.history],
                    },
                )
                _write_metrics(run_dir, result.history)
            if on_epoch is not None:
                on_epoch(row, result)
    except Exception as e:  # [distributed] a dead or hung peer: one clear line, not a trace
        if ctx.enabled and dist.is_collective_failure(e):
            raise dist.failure(e, ctx, result.last_path) from e
        raise
    finally:
        if result.history and ctx.is_main:
            try:
                from lenet.plots import plot_curves

                plot_curves(result.history, run_dir / "curves.png", select_on=cfg.select_on)
            except Exception as e:  # a plotting failure must never lose the run
                log.warning("could not draw curves.png: %s", e)
    dist.finish(ctx)  # [distributed] every rank returns once rank 0's files exist
    return result
