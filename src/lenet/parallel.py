"""Preprocessing in worker processes: image files decoded and made MNIST-like on every core.

Decoding and preprocessing one small image is ~0.6 ms of many short OpenCV/Pillow calls with
Python in between, so threads fight over the GIL (a 2-thread pool measured slower than one
thread); processes do not. Workers import only :mod:`lenet.preprocess` (numpy, Pillow, OpenCV),
never torch, so they start in a fraction of a second and each costs tens of MB. They receive
file paths in chunks and send back 28x28 uint8 images (784 bytes each), so almost nothing
crosses the process boundary.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from lenet.errors import LenetError, NoDigitError
from lenet.preprocess import MAX_PIXELS, preprocess, quiet_bomb_warning

log = logging.getLogger(__name__)

NO_DIGIT = "no digit found"
CRASHED = "internal error: the preprocessing process crashed on this image"
CHUNK = 64  # inputs per task sent to a worker process
PARALLEL_MIN = 256  # by default, lists of at least this many files go to worker processes

# One input's outcome: (28x28 uint8 or None, reason or None, error or None).
Outcome = tuple[np.ndarray | None, str | None, str | None]


def prepare_one(source, max_pixels: int = MAX_PIXELS) -> Outcome:
    """Preprocess one input; every failure becomes a reason ("no digit found") or an error."""
    try:
        return preprocess(source, max_pixels=max_pixels), None, None
    except NoDigitError as e:
        log.debug("%s: %s", source if isinstance(source, (str, os.PathLike)) else "input", e)
        return None, NO_DIGIT, None
    except LenetError as e:
        return None, None, str(e)
    except Exception as e:  # a bug must not sink the other inputs; say what it was
        log.exception("unexpected failure while preprocessing")
        return None, None, f"internal error: {type(e).__name__}: {e}"


def prepare_many(sources: list, max_pixels: int = MAX_PIXELS) -> list[Outcome]:
    """:func:`prepare_one` for each of ``sources``, in order (one task of a worker process)."""
    return [prepare_one(s, max_pixels) for s in sources]


def _worker_init() -> None:
    # Ctrl-C goes to the whole process group: the parent stops the work and reports once, the
    # workers must not each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_bomb_warning()


def _ready() -> int:
    return os.getpid()


def start_pool(workers: int | None, n: int) -> PreprocessPool | None:
    """The worker processes for ``n`` image files, started now: ``workers`` of them, by default
    one per core from :data:`PARALLEL_MIN` files on; None when this process is enough. Usable
    as a context manager (queued work is dropped if the block fails)."""
    if workers is None:
        workers = (os.cpu_count() or 1) if n >= PARALLEL_MIN else 1
    return PreprocessPool(workers) if workers > 1 else None


class PreprocessPool:
    """``workers`` processes that preprocess lists of image files (see the module docstring).

    Started at once (in the background: the caller may go on loading a model meanwhile). The
    ``spawn`` start method: a fork of a process that has loaded torch (its thread pools) is not
    safe, and spawned workers never import torch.
    """

    def __init__(self, workers: int, max_pixels: int = MAX_PIXELS):
        if workers < 1:
            raise LenetError("workers must be at least 1")
        self.workers = workers
        self.max_pixels = max_pixels
        self._pool = self._new_pool()
        for _ in range(workers):  # start every worker now, not on first use
            self._pool.submit(_ready)

    def submit(self, sources: list) -> Future:
        """Preprocess ``sources`` (paths) in a worker: a future of a list of outcomes."""
        try:
            return self._pool.submit(prepare_many, list(sources), self.max_pixels)
        except BrokenProcessPool:  # a worker died earlier: the chunk is redone by result()
            broken: Future = Future()
            broken.set_exception(BrokenProcessPool("a preprocessing worker died"))
            return broken

    def result(self, future: Future, sources: Iterable) -> list[Outcome]:
        """The outcomes of a submitted chunk. If a worker died (a decoder crash, out of
        memory), the chunk is redone one input at a time in fresh workers, so that only the
        input that kills a worker again is reported (as an error), never this process."""
        try:
            return future.result()
        except BrokenProcessPool:
            log.warning("a preprocessing worker died; redoing its chunk one image at a time")
        out: list[Outcome] = []
        for source in sources:
            try:
                out += self._submit_fresh([source]).result()
            except BrokenProcessPool:
                out.append((None, None, CRASHED))
        return out

    def _submit_fresh(self, sources: list) -> Future:
        """Submit to the pool, replacing it first if a worker of it has died."""
        try:
            return self._pool.submit(prepare_many, sources, self.max_pixels)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(prepare_many, sources, self.max_pixels)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
        )

    def imap(self, sources, chunk: int = CHUNK, window: int = 64) -> Prepared:
        """Preprocess ``sources`` in the workers: an iterator of ``(source, outcome)`` in order.

        Work starts at once (``window`` chunks of ``chunk`` inputs are submitted before the
        first is read back), so a caller can load its model meanwhile. Inputs that cannot be
        sent to another process (file-likes) are preprocessed in this one, in their turn.
        """
        return Prepared(self, sources, chunk, window)

    def close(self, cancel: bool = False) -> None:
        """Stop the workers (``cancel``: drop queued chunks instead of finishing them)."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> PreprocessPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close(cancel=exc[0] is not None)


def _sendable(source) -> bool:
    return isinstance(source, (str, os.PathLike, bytes, bytearray, np.ndarray))


class Prepared:
    """The iterator :meth:`PreprocessPool.imap` returns: outcomes in input order, at most
    ``window`` chunks in flight (bounded memory for a folder of any size)."""

    def __init__(self, pool: PreprocessPool, sources, chunk: int, window: int):
        self.pool = pool
        self._sources = iter(sources)
        self._chunk = chunk
        self._window = window
        self._ahead: deque[tuple[list, Future | None]] = deque()
        self._done: deque[tuple[object, Outcome]] = deque()
        self._fill()

    def _fill(self) -> None:
        while len(self._ahead) < self._window:
            chunk = list(itertools.islice(self._sources, self._chunk))
            if not chunk:
                return
            sendable = all(_sendable(s) for s in chunk)
            self._ahead.append((chunk, self.pool.submit(chunk) if sendable else None))

    def __iter__(self) -> Prepared:
        return self

    def __next__(self) -> tuple[object, Outcome]:
        if not self._done:
            if not self._ahead:
                raise StopIteration
            chunk, future = self._ahead.popleft()
            if future is None:
                outcomes = prepare_many(chunk, self.pool.max_pixels)
            else:
                outcomes = self.pool.result(future, chunk)
            self._done.extend(zip(chunk, outcomes, strict=True))
            self._fill()
        return self._done.popleft()

    def cancel(self) -> None:
        """Drop the chunks not started yet (the caller stopped reading)."""
        for _, future in self._ahead:
            if future is not None:
                future.cancel()
        self._ahead.clear()
