"""The training engine: in-memory data, one epoch loop for every model, checkpoints and resume.

Read it top-down, one function per phase: settings and resume (:func:`settings`) -> data
(:func:`load_data`) -> model and optimizer (:func:`build`) -> one epoch (:func:`train_epoch`) ->
evaluate (:func:`evaluate`) -> checkpoint (:func:`save_epoch`); :func:`train` strings them
together. Data parallelism hides behind one strategy object (:mod:`lenet.distributed`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from lenet import distributed
from lenet.augment import make_augmenter
from lenet.checkpoint import clean_state_dict, make_payload, read_checkpoint, save_checkpoint
from lenet.config import TrainConfig, derive_seed, given_overrides, make_config, validate
from lenet.data import ensure_data, load_split
from lenet.errors import LenetError
from lenet.fileio import atomic_write_text
from lenet.models import create_model, get_spec, model_config
from lenet.normalization import MNIST_STATS, TOTENSOR, Normalization, normalize
from lenet.ops import prepare_for_device
from lenet.optim import build_optimizer, build_scheduler
from lenet.runtime import predict_logits, resolve_device

log = logging.getLogger(__name__)

Strategy = distributed.SingleProcess  # DDPStrategy has the same methods

# What a resumed run may change (where it runs, where the data lies, how long it goes on):
# everything else is the run's own, saved in last.pt.
RESUMABLE = ("epochs", "device", "threads", "data_dir")


# ---------------------------------------------------------------------------- results


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


# The file a new run claims its folder with (created exclusively, replaced by the real one).
CLAIM = "config.json"


def _new_run_dir(cfg: TrainConfig, overwrite: bool) -> tuple[Path, bool]:
    """Create and claim the run folder atomically: (folder, whether this call created it).

    An automatic name takes the next free ``-2``, ``-3``... when two runs start in the same
    second (``mkdir`` either creates the folder or fails: never two runs in one folder). An
    explicit ``--name`` that is taken (files in it, or another run claiming it this very moment)
    is refused, unless ``--overwrite``.
    """
    out = Path(cfg.out)
    if cfg.name:
        run_dir, created = out / cfg.name, False
        refuse = LenetError(
            f"run folder {run_dir} already exists; use --resume {run_dir}/last.pt, "
            "another --name, or --overwrite"
        )
        try:
            run_dir.mkdir(parents=True)
            created = True
        except FileExistsError:
            if not run_dir.is_dir():
                raise LenetError(
                    f"{run_dir} exists and is not a folder; use another --name"
                ) from None
            if any(run_dir.iterdir()) and not overwrite:
                raise refuse from None
        if not overwrite:
            try:  # an empty folder: the run whose exclusive create succeeds owns it
                os.close(os.open(run_dir / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            except FileExistsError:
                raise refuse from None
        return run_dir, created
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = out / f"{cfg.model}-{cfg.recipe}-{stamp}"
    run_dir, k = base, 2
    while True:
        try:
            run_dir.mkdir(parents=True)
            return run_dir, True
        except FileExistsError:
            run_dir, k = Path(f"{base}-{k}"), k + 1


def _release_run_dir(run_dir: Path, created: bool) -> None:
    """Undo a claim when the run fails before it starts (bad data, no memory): the empty claim
    file goes, and the folder too if this run created it and nothing else is in it."""
    claim = run_dir / CLAIM
    try:
        if claim.is_file() and claim.stat().st_size == 0:
            claim.unlink()
        if created:
            run_dir.rmdir()  # only succeeds when empty
    except OSError:
        pass


def _write_metrics(run_dir: Path, history: list[EpochResult]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in history:
        w.writerow(asdict(r))
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


# ---------------------------------------------------------------------------- 1. settings, resume


def resume_config(saved: dict, overrides: dict, source: str | Path = "last.pt") -> TrainConfig:
    """The settings a resumed run continues with: the saved ones, where only :data:`RESUMABLE`
    may change (a setting given with its saved value is no change). ``lenet train --resume`` and
    ``lenet.train(resume=...)`` both refuse through here, with the same message."""
    cfg = TrainConfig.from_dict(saved)
    given = given_overrides(overrides)
    changed = [k for k, v in given.items() if k not in RESUMABLE and v != getattr(cfg, k)]
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in changed)
        allowed = ", ".join(f"--{k.replace('_', '-')}" for k in RESUMABLE)
        raise LenetError(
            f"--resume continues a run with its own settings; it cannot change {flags} "
            f"(only {allowed})"
        )
    new = replace(cfg, **given)
    validate(new)
    if new.epochs != cfg.epochs and cfg.scheduler in ("onecycle", "cosine"):
        # These schedules are laid out over the run's total steps when it starts.
        raise LenetError(
            f"{source}: a {cfg.scheduler} schedule is fixed for {cfg.epochs} epochs when "
            "the run starts; resume without --epochs, or start a new run"
        )
    return new


def settings(
    config: TrainConfig | None, resume: str | Path | None, overrides: dict
) -> tuple[TrainConfig, dict | None]:
    """The run's settings (recipe or ``config``, then overrides) and, when resuming, the
    ``last.pt`` it continues from."""
    if resume is not None and config is not None:
        raise LenetError(
            "pass config or resume, not both: a resumed run continues with its saved settings "
            "(give the few that may change as keywords)"
        )
    if resume is None:
        if config is None:
            return make_config(**overrides), None
        cfg = replace(config, **given_overrides(overrides))
        validate(cfg)
        return cfg, None
    state = read_checkpoint(resume)
    if "optimizer" not in state or "train_config" not in state:
        raise LenetError(f"{resume}: not a last.pt written by lenet train (cannot resume from it)")
    cfg = resume_config(state["train_config"], overrides, resume)
    done = int(state["epoch"])
    if done >= cfg.epochs:
        raise LenetError(f"{resume}: already trained {done} epochs; pass --epochs > {done}")
    return cfg, state


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
    g = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    return torch.randperm(n, generator=g)


# ---------------------------------------------------------------------------- 2. data


@dataclass
class Data:
    """The run's images, normalized once and resident on the device."""

    x_train: torch.Tensor  # (n_used, 1, 28, 28)
    y_train: torch.Tensor  # (n_used,)
    x_sel: torch.Tensor | None  # this rank's part of the split that picks best.pt, or None
    y_sel: torch.Tensor | None
    normalization: Normalization

    @property
    def n_used(self) -> int:
        """Training images per epoch."""
        return len(self.y_train)


def load_data(cfg: TrainConfig, strategy: Strategy) -> Data:
    """Training images (less the held-out tail) and the selection split, on the device."""
    strategy.once_per_machine(lambda: ensure_data(cfg.data_dir, cfg.dataset))  # no racing fetches
    norm, device = resolve_normalization(cfg), strategy.device
    full = load_split("train", cfg.data_dir, dataset=cfg.dataset)
    n_train = len(full) - cfg.val_size
    if n_train <= 0:
        raise LenetError(f"--val-size {cfg.val_size} leaves no training images (of {len(full)})")
    n_used = min(cfg.limit, n_train) if cfg.limit else n_train
    x_sel = y_sel = None
    if cfg.select_on == "test":
        sel = load_split("test", cfg.data_dir, dataset=cfg.dataset)
        x_sel, y_sel = normalize(sel.images, norm), sel.labels
    elif cfg.val_size:
        x_sel, y_sel = normalize(full.images[n_train:], norm), full.labels[n_train:]
    if x_sel is not None:  # each rank scores its part; the sums are reduced
        x_sel, y_sel = strategy.shard(x_sel).to(device), strategy.shard(y_sel).to(device)
    x_train = normalize(full.images[:n_used], norm).to(device)
    return Data(x_train, full.labels[:n_used].to(device), x_sel, y_sel, norm)


# ---------------------------------------------------------------------------- 3. model, optimizer


@dataclass
class Trainee:
    """The model and what updates it: ``net`` is what trains (DDP or ``model`` itself);
    ``model`` is what is saved and evaluated."""

    model: torch.nn.Module
    net: torch.nn.Module
    model_config: dict
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler | None
    per_step: bool  # the schedule steps after every batch (else after every epoch)


def build(cfg: TrainConfig, n_used: int, strategy: Strategy) -> Trainee:
    """A fresh model (seeded by ``cfg.seed``), its optimizer and its LR schedule."""
    torch.manual_seed(cfg.seed)
    mcfg = model_config(cfg.model)
    model = create_model(cfg.model, **mcfg).to(strategy.device)
    prepare_for_device(model, strategy.device)  # same math; CPU: channels-last memory
    opt = build_optimizer(cfg, model.parameters(), strategy.device)
    sched, per_step = build_scheduler(cfg, opt, -(-n_used // cfg.batch_size))
    return Trainee(model, strategy.wrap_model(model), mcfg, opt, sched, per_step)


def restore(t: Trainee, state: dict, result: TrainResult) -> int:
    """Load ``last.pt``'s weights, optimizer, schedule and history; the epoch to continue from."""
    t.model.load_state_dict(clean_state_dict(state["state_dict"]))
    t.opt.load_state_dict(state["optimizer"])
    if t.sched is not None and state.get("scheduler"):
        t.sched.load_state_dict(state["scheduler"])
    result.history = [EpochResult(**r) for r in state.get("history", [])]
    result.best_acc = state.get("best", {}).get("acc")
    result.best_epoch = state.get("best", {}).get("epoch")
    log.info("resuming %s from epoch %d", result.run_dir, int(state["epoch"]))
    return int(state["epoch"])


# ---------------------------------------------------------------------------- 4. one epoch

# Images sdlm re-estimates its second derivatives on before each pass (the paper's 500).
HESSIAN_SAMPLES = 500


def loss_logits(cfg: TrainConfig) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the training loss sees instead of the model's (N, 10) output, or None for the output
    itself: with ``--rbf-j`` j, lenet5-1998's minus squared distances get an 11th logit -j, so
    the cross-entropy is the paper's MAP criterion (eq. 9) y_D + log(exp(-j) + sum exp(-y_i))."""
    if not cfg.rbf_j:
        return None
    j = cfg.rbf_j

    def with_rubbish(out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out, out.new_full((len(out), 1), -j)], dim=1)  # (N, 11)

    return with_rubbish


def estimate_curvature(t: Trainee, data: Data, cfg: TrainConfig, perm: torch.Tensor) -> None:
    """Before a pass, an optimizer that uses second derivatives (sdlm) re-estimates them on the
    first :data:`HESSIAN_SAMPLES` images of the pass's order (undistorted; the same on every
    rank, so data-parallel ranks agree). PyTorch's own operators run meanwhile: torch.func's
    per-image Jacobians cannot go through the fused kernels' autograd Functions."""
    from lenet.kernels import turned_off
    from lenet.models.layers import EuclideanRBF

    estimate = getattr(t.opt, "estimate_diagonal", None)
    if estimate is None:
        return
    # lenet5-1998's RBF output: its squared distance's curvature at F6 counts (the paper's).
    rbf = [name for name, m in t.model.named_modules() if isinstance(m, EuclideanRBF)]
    with turned_off():
        x = data.x_train[perm[:HESSIAN_SAMPLES]]
        estimate(t.model, x, loss_logits(cfg), squared_input=rbf[0] if rbf else None)


def train_epoch(
    t: Trainee, data: Data, cfg: TrainConfig, epoch: int, strategy: Strategy, progress: bool
) -> tuple[float, float, float, float]:
    """One pass over the training images in the epoch's order, each global batch split over the
    ranks: (train loss, train accuracy over all ranks, LR used, seconds)."""
    from tqdm import tqdm

    device, n = strategy.device, data.n_used
    t.model.train()
    perm = epoch_permutation(n, cfg.seed, epoch).to(device)
    to_loss = loss_logits(cfg)
    augment = make_augmenter(cfg.augment, cfg.seed, epoch)
    # Dropout's randomness: a function of (seed, epoch, rank): resume is exact, ranks differ.
    torch.manual_seed(derive_seed(cfg.seed, "dropout", epoch, strategy.rank))
    loss_sum = torch.zeros((), device=device)  # this rank's sum of per-image losses
    correct = torch.zeros((), dtype=torch.long, device=device)
    lr, t0 = t.opt.param_groups[0]["lr"], time.perf_counter()
    estimate_curvature(t, data, cfg, perm)  # timed with the pass: it is part of its cost
    bar = tqdm(
        total=n,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="img",
        unit_scale=True,
        leave=False,
        disable=None if progress else True,
        mininterval=0.5,
    )
    for i in range(0, n, cfg.batch_size):
        gidx = perm[i : i + cfg.batch_size]  # the global batch
        idx = strategy.shard(gidx)  # this rank's disjoint part of it
        if augment is None:
            xb = data.x_train[idx]
        else:  # distort the global batch, keep this rank's part: N ranks = 1 process
            xb = strategy.shard(augment(data.x_train[gidx], data.y_train[gidx]))
        yb = data.y_train[idx]
        out = t.net(xb)
        # mean over the global batch
        loss = strategy.batch_loss(out if to_loss is None else to_loss(out), yb, len(gidx))
        t.opt.zero_grad(set_to_none=True)
        loss.backward()
        t.opt.step()
        if t.per_step:
            t.sched.step()
        loss_sum += loss.detach() * (len(gidx) / strategy.world_size)
        correct += (out.detach().argmax(1) == yb).sum()
        bar.update(len(gidx))
    bar.close()
    if t.sched is not None and not t.per_step:
        t.sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if t.per_step:
        lr = t.opt.param_groups[0]["lr"]
    loss_total, correct_total = strategy.sum_values(loss_sum, correct)
    return loss_total / n, correct_total / n, lr, seconds


def check_finite(model: torch.nn.Module, loss: float, epoch: int, result: TrainResult) -> None:
    """Stop the run before anything is saved when the loss or a weight is no longer a finite
    number (a diverged run): best.pt and last.pt keep the last good epoch. The loss is summed
    over the ranks and DDP keeps the weights equal, so every rank stops alike."""
    finite = math.isfinite(loss) and all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if finite:
        return
    kept = "best.pt and last.pt are untouched" if epoch > 1 else "no checkpoint was written"
    raise distributed.SameErrorOnEveryRank(
        f"training diverged in epoch {epoch} (loss {loss:g}, weights not all finite); stopped "
        f"without saving that epoch ({kept} in {result.run_dir}); try a lower --lr"
    )


# ---------------------------------------------------------------------------- 5. evaluate


def evaluate(
    model: torch.nn.Module, data: Data, cfg: TrainConfig, strategy: Strategy
) -> tuple[float | None, float | None]:
    """Loss and accuracy on the selection split over all ranks; (None, None) without one."""
    if data.x_sel is None:
        return None, None
    logits = predict_logits(model, data.x_sel, cfg.eval_batch_size)
    return strategy.loss_and_accuracy(logits, data.y_sel)


# ---------------------------------------------------------------------------- 6. checkpoint


def save_epoch(t: Trainee, cfg: TrainConfig, data: Data, result: TrainResult) -> None:
    """best.pt (when this epoch is the best), last.pt (everything resume needs), metrics.csv."""
    row = result.history[-1]

    def payload() -> dict:
        return make_payload(
            t.model,
            cfg.model,
            t.model_config,
            data.normalization,
            epoch=row.epoch,
            metrics=asdict(row),
            train_config=cfg.to_dict(),
        )

    if row.best:
        save_checkpoint(result.best_path, payload())
    save_checkpoint(
        result.last_path,
        {
            **payload(),
            "optimizer": t.opt.state_dict(),
            "scheduler": t.sched.state_dict() if t.sched is not None else None,
            "best": {"acc": result.best_acc, "epoch": result.best_epoch},
            "history": [asdict(r) for r in result.history],
        },
    )
    _write_metrics(result.run_dir, result.history)


def draw_curves(result: TrainResult) -> None:
    """curves.png from the history (matplotlib is imported here, after training, not before)."""
    try:
        from lenet.plots import plot_curves

        plot_curves(result.history, result.run_dir / "curves.png", select_on=result.select_on)
    except Exception as e:  # a plotting failure must never lose the run
        log.warning("could not draw curves.png: %s", e)


# ---------------------------------------------------------------------------- the run


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
    run from its ``last.pt`` (only ``epochs``, ``device``, ``threads``, ``data_dir`` may change; see
    :func:`resume_config`). Under torchrun it trains data-parallel (``dist_timeout`` bounds every
    collective); only rank 0 writes files.
    """
    cfg, state = settings(config, resume, overrides)
    strategy = distributed.setup(resolve_device(cfg.device), dist_timeout)
    strategy.check_global_batch(cfg.batch_size)  # --batch-size is the global batch
    if state is None:  # rank 0 names and claims the folder: ranks may start in different seconds
        run_dir, created = strategy.from_main(lambda: _new_run_dir(cfg, overwrite))
    else:
        run_dir, created = Path(resume).parent, False
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.set_flush_denormal(True)  # denormals make fp32 CPU training several times slower
        data = load_data(cfg, strategy)
        t = build(cfg, data.n_used, strategy)
        result = TrainResult(
            run_dir, run_dir / "best.pt", run_dir / "last.pt", None, None, cfg.select_on, [], cfg
        )
        start = restore(t, state, result) if state is not None else 0
        if strategy.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(cfg.to_dict(), indent=2) + "\n"
            atomic_write_text(run_dir / "config.json", text)
    except BaseException:
        if state is None and strategy.is_main:
            _release_run_dir(run_dir, created)
        raise
    log.info(
        "training %s (%s recipe) on %s: %d train images, select on %s -> %s",
        cfg.model,
        cfg.recipe,
        strategy.device,
        data.n_used,
        cfg.select_on,
        run_dir,
    )

    progress = progress and strategy.is_main  # one progress bar, on rank 0
    with strategy.failures_as_errors(result.last_path):  # a lost peer: one clear line
        try:
            for epoch in range(start, cfg.epochs):
                loss, acc, lr, seconds = train_epoch(t, data, cfg, epoch, strategy, progress)
                check_finite(t.model, loss, epoch + 1, result)
                val_loss, val_acc = evaluate(t.model, data, cfg, strategy)
                # "last": every epoch replaces best.pt; best_acc is then that epoch's val or None.
                best = cfg.select_on == "last" or result.best_acc is None
                best = best or val_acc > result.best_acc
                images_per_s = data.n_used / seconds
                row = EpochResult(
                    epoch + 1, loss, acc, val_loss, val_acc, lr, seconds, images_per_s, best
                )
                result.history.append(row)
                if best:
                    result.best_acc, result.best_epoch = val_acc, epoch + 1
                if strategy.is_main:  # rank 0 alone writes files
                    save_epoch(t, cfg, data, result)
                if on_epoch is not None:
                    on_epoch(row, result)
        finally:
            if result.history and strategy.is_main:
                draw_curves(result)
    strategy.finish()  # every rank returns once rank 0's files exist
    return result
