"""Data-parallel training across processes (torchrun / DistributedDataParallel): setup, sharding,
exact metric reduction, rank-0-only side effects and clear errors when a peer dies or hangs.

The engine talks to one object, chosen once by :func:`setup`: :class:`SingleProcess` (a plain
process, every method a no-op or a direct call) or :class:`DDPStrategy` (torchrun's process group).
Both have the same methods, so the training loop has no "if distributed" in it.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lenet.config import MAX_DIST_TIMEOUT_S
from lenet.errors import LenetError
from lenet.runtime import loss_and_accuracy

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds a collective may wait for its peers before every rank gives up with a clear error.
# Generous enough for rank 0 writing checkpoints and plots between epochs; override with
# LENET_DIST_TIMEOUT or ``lenet train --dist-timeout``.
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "LENET_DIST_TIMEOUT"

# Substrings of the RuntimeErrors gloo/NCCL raise when a peer died, hung or closed its socket.
_FAILURE_MARKERS = (
    "gloo",
    "nccl",
    "processgroup",
    "connection reset",
    "connection closed",
    "timed out",
    "timeout",
    "broken pipe",
    "socket",
)


class DistributedError(LenetError):
    """Another training process died or stopped answering (a collective failed or timed out)."""


class SameErrorOnEveryRank(LenetError):
    """An error every rank raises alike (a bad flag, a taken run folder): the CLI prints it on
    rank 0 only, instead of once per process."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: a single process, no process group
    timeout_s: float = DEFAULT_TIMEOUT_S
    owned: bool = False  # True when setup() created the process group (and so tears it down)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 outside torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def env_rank() -> int:
    """``RANK`` as torchrun sets it (0 outside torchrun)."""
    return _env_int("RANK", 0)


def is_main() -> bool:
    """True on rank 0 or in a plain single process (usable before :func:`setup`)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_rank() == 0


def restart_count() -> int:
    """How many times torchrun restarted this worker group (``--max-restarts``); 0 otherwise."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise LenetError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve_timeout(seconds: float | None = None) -> float:
    """The collective timeout: the argument, else ``LENET_DIST_TIMEOUT``, else 300 s."""
    if seconds is None:
        raw = os.environ.get(TIMEOUT_ENV, "")
        try:
            seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
        except ValueError:
            raise LenetError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not (isinstance(seconds, (int, float)) and 0 < seconds <= MAX_DIST_TIMEOUT_S):
        # `not (0 < x)` also refuses nan, which passes a plain `x <= 0` check.
        raise LenetError(
            f"the distributed timeout must be a number of seconds above 0 and at most "
            f"{MAX_DIST_TIMEOUT_S:g} (got {seconds!r})"
        )
    return float(seconds)


def setup(device: torch.device, timeout_s: float | None = None) -> SingleProcess | DDPStrategy:
    """The strategy for this process: :class:`DDPStrategy` under torchrun (see :func:`join`),
    :class:`SingleProcess` otherwise."""
    ctx = join(device, timeout_s)
    return DDPStrategy(ctx) if ctx.enabled else SingleProcess(ctx)


def join(device: torch.device, timeout_s: float | None = None) -> DistContext:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``...),
    gloo on CPU and NCCL on CUDA, with a bounded collective timeout; a world of one otherwise.

    A process group the caller already initialized is used as it is (and left for them to close).
    """
    timeout = resolve_timeout(timeout_s)
    if dist.is_available() and dist.is_initialized():
        owned = False
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        owned = True
        world, rank = env_world_size(), env_rank()
        if world <= 1:
            return DistContext(device=device, timeout_s=timeout)
    if not dist.is_available():
        raise LenetError("this PyTorch build has no torch.distributed; run a single process")
    local_rank = _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        # One GPU per process: the local rank picks it (torchrun --nproc-per-node <= GPUs).
        if local_rank >= torch.cuda.device_count():
            raise LenetError(
                f"local rank {local_rank} has no GPU (this machine has "
                f"{torch.cuda.device_count()}); use --nproc-per-node <= the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise LenetError(
            f"distributed training on {device.type} is not supported; use --device cpu"
        )
    if owned:
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        except Exception as e:
            raise DistributedError(
                f"rank {rank} of {world}: could not join the other training processes within "
                f"{timeout:g} s ({_first_line(e)})"
            ) from None
        atexit.register(_destroy)
    else:
        backend = dist.get_backend()
    ctx = DistContext(rank, world, local_rank, device, backend, timeout, owned)
    if ctx.is_main:
        log.info("distributed: %d processes, backend %s, timeout %g s", world, backend, timeout)
    return ctx


def launch_local(nproc: int, cmd: list[str]) -> int:
    """Run ``cmd`` as ``nproc`` processes on this machine, as ``torchrun --standalone`` does
    (same elastic agent, same environment for the workers); 0 on success, 2 when a worker
    already reported a ``lenet: error:``.

    A failed worker is one :class:`DistributedError` line here: the workers print their own reason.
    """
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent logs every start and stop at INFO/WARNING; the workers say what matters.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
    )
    try:
        elastic_launch(config, cmd[0])(*cmd[1:])
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode == 2:  # a worker already printed its one `lenet: error:` line
            return 2
        raise DistributedError(
            f"training process of rank {rank} failed (exit status {failure.exitcode}); "
            "the messages above say why"
        ) from None
    return 0


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_global_batch(batch_size: int, ctx: DistContext) -> int:
    """The per-rank batch: ``--batch-size`` is the global batch and must divide evenly."""
    if batch_size % ctx.world_size:
        lo = batch_size - batch_size % ctx.world_size
        hi = lo + ctx.world_size
        nearest = f"{lo} or {hi}" if lo > 0 else f"{hi}"
        raise SameErrorOnEveryRank(
            f"--batch-size {batch_size} is the global batch and must divide evenly over "
            f"{ctx.world_size} processes (try {nearest})"
        )
    return batch_size // ctx.world_size


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed or timed-out collective (a peer died or hung)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    if isinstance(exc, RuntimeError):
        msg = str(exc).lower()
        return any(m in msg for m in _FAILURE_MARKERS)
    return False


def failure(exc: BaseException, ctx: DistContext, last_path: os.PathLike | str) -> LenetError:
    """The one-line error every surviving rank reports when a peer is gone."""
    return DistributedError(
        f"rank {ctx.rank} of {ctx.world_size}: lost contact with the other training processes "
        f"(a rank died, or hung longer than the {ctx.timeout_s:g} s timeout): "
        f"{_first_line(exc)}; continue from the last finished epoch with "
        f"--resume {last_path}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    # gloo prefixes its messages with the C++ source location: drop it.
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    return line[:200]


# ---------------------------------------------------------------------------- the two strategies


class SingleProcess:
    """One process trains alone: the whole batch, the plain model, local sums, no waiting."""

    def __init__(self, ctx: DistContext | None = None):
        self.ctx = ctx or DistContext()

    device = property(lambda self: self.ctx.device, doc="Where this process trains.")
    rank = property(lambda self: self.ctx.rank, doc="This process's rank (0 here).")
    world_size = property(lambda self: self.ctx.world_size, doc="Processes taking part.")
    is_main = property(lambda self: self.ctx.is_main, doc="Whether this process writes files.")

    def check_global_batch(self, batch_size: int) -> int:
        """The per-process batch (see :func:`check_global_batch`)."""
        return check_global_batch(batch_size, self.ctx)

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's part of ``rows``: all of it."""
        return rows

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The module to train with: ``model`` itself."""
        return model

    def batch_loss(self, logits: torch.Tensor, labels: torch.Tensor, global_count: int):
        """Mean cross-entropy of the batch."""
        return F.cross_entropy(logits, labels)

    def sum_values(self, *values: torch.Tensor | float | int) -> tuple[float, ...]:
        """The values as Python floats (nothing to add up across processes)."""
        return tuple(v.item() if isinstance(v, torch.Tensor) else float(v) for v in values)

    def loss_and_accuracy(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """Mean cross-entropy and accuracy of ``logits`` against ``labels``."""
        return loss_and_accuracy(logits, labels)

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()``."""
        return fn()

    def once_per_machine(self, fn: Callable[[], object]) -> None:
        """``fn()``."""
        fn()

    def failures_as_errors(self, last_path: os.PathLike | str) -> contextlib.AbstractContextManager:
        """Nothing to translate: no peers to lose."""
        return contextlib.nullcontext()

    def finish(self) -> None:
        """Nothing to wait for."""


class DDPStrategy(SingleProcess):
    """One of ``world_size`` torchrun processes: disjoint shards of each global batch, a DDP
    model, sums reduced over ranks, rank 0 alone deciding and writing, bounded waits."""

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of ``rows`` (a global batch of indices, or a validation
        set): parts are disjoint, cover ``rows`` in order, and differ in size by at most one (a
        last, partial batch may leave a rank with fewer rows, or none)."""
        return rows.tensor_split(self.ctx.world_size)[self.ctx.rank]

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """DDP around ``model``. Keep saving and evaluating ``model`` (never the wrapper), so
        checkpoints carry no ``module.`` prefixes."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ctx = self.ctx
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DDP(model, device_ids=ids, output_device=ctx.device.index if ids else None)

    def batch_loss(self, logits: torch.Tensor, labels: torch.Tensor, global_count: int):
        """The loss to back-propagate for this rank's shard of a global batch of ``global_count``.

        DDP averages gradients over ranks (divides their sum by world size), so each rank
        returns ``world_size * (sum of its per-example losses) / global_count``: the average is
        then exactly the gradient of the global batch mean, even when the last batch splits
        unevenly.
        """
        scale = self.ctx.world_size / global_count
        return F.cross_entropy(logits, labels, reduction="sum") * scale

    def sum_values(self, *values: torch.Tensor | float | int) -> tuple[float, ...]:
        """Sum scalars over all ranks (exact counts and sums, in float64); Python floats back."""
        device = self.ctx.device
        t = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values]
        )
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return tuple(t.tolist())

    def loss_and_accuracy(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """Mean cross-entropy and accuracy over the shards of all ranks: sums and counts are
        reduced first, then divided (never a mean of per-rank means)."""
        loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        correct = (logits.argmax(1) == labels).sum()
        loss_sum, correct, count = self.sum_values(loss_sum, correct, len(labels))
        return loss_sum / max(count, 1), correct / max(count, 1)

    def from_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its (picklable) result, or its LenetError, to every
        rank: for decisions that must agree everywhere, such as the run folder's name."""
        ctx = self.ctx
        box: list = [None]
        if ctx.is_main:
            try:
                box[0] = ("ok", fn())
            except LenetError as e:
                box[0] = ("error", str(e))
        device = ctx.device if ctx.backend == "nccl" else None
        dist.broadcast_object_list(box, src=0, device=device)
        kind, value = box[0]
        if kind == "error":
            raise SameErrorOnEveryRank(value)
        return value

    def once_per_machine(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on each machine's local rank 0 while that machine's other ranks wait: for
        preparing local files (fetching MNIST) without N processes racing to write them; an
        error there surfaces on the waiting ranks too, when they read the files."""
        try:
            if self.ctx.local_rank == 0:
                fn()
        finally:
            self._barrier()

    @contextlib.contextmanager
    def failures_as_errors(self, last_path: os.PathLike | str):
        """A failed or timed-out collective becomes one :class:`DistributedError` line."""
        try:
            yield
        except Exception as e:
            if is_collective_failure(e):
                raise failure(e, self.ctx, last_path) from e
            raise

    def finish(self) -> None:
        """End of a successful run: wait until rank 0 has written every file, then close the
        group (if :func:`join` created it)."""
        self._barrier()
        if self.ctx.owned:
            _destroy()

    def _barrier(self) -> None:
        """Wait for every rank (bounded by the timeout)."""
        if self.ctx.backend == "nccl":
            dist.barrier(device_ids=[self.ctx.device.index])
        else:
            dist.barrier()
