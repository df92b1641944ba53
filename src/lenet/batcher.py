"""The service's prediction queue: bounded admission, dropped work for gone clients, batching.

Each ``lenet serve`` process has one :class:`Batcher`. A request's image bytes wait in a bounded
queue (over the bound: :class:`ServerBusy`, answered 503); one consumer task takes what has
gathered (up to ``max_batch`` requests), preprocesses each and runs the network once for all of
them (``Predictor.classify``), in one worker thread so the event loop keeps reading requests
meanwhile. A request whose client disconnected before its turn is dropped, not computed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lenet.predictor import Prediction, Predictor

log = logging.getLogger("lenet.server")


class ServerBusy(Exception):
    """The queue is full: the request is refused at once (503 with Retry-After)."""


class ClientGone(Exception):
    """The client disconnected while its request waited: nobody to answer."""


@dataclass
class _Job:
    data: bytes
    top_k: int
    min_confidence: float | None
    future: asyncio.Future
    fn: Callable[[], object] | None = None  # a job of its own (``Batcher.call``), not a predict


@dataclass
class _Failed:
    error: Exception


class Batcher:
    """Bounded queue + micro-batched prediction for one event loop (see the module docstring).

    ``queue``: requests allowed to wait beyond the batch being computed; ``max_batch``: most
    requests per network call (1 = one forward per request); ``in_thread``: compute in one
    worker thread (the loop stays free for I/O) rather than on the loop itself; ``max_pixels``:
    larger images are refused from their header (None: the predictor's own cap).
    """

    def __init__(
        self,
        predictor: Predictor,
        queue: int = 64,
        max_batch: int = 16,
        in_thread: bool = True,
        max_pixels: int | None = None,
    ):
        if queue < 1 or max_batch < 1:
            raise ValueError("queue and max_batch must be at least 1")
        self.predictor = predictor
        self.queue = queue
        self.max_batch = max_batch
        self.in_thread = in_thread
        self.max_pixels = max_pixels
        self.running = 0  # requests in the batch being computed now
        self.dropped = 0  # requests skipped because their client had gone
        # Requests admitted and reading their body: they hold memory too, so they count against
        # the bound (at most ``queue`` bodies of up to max_bytes each, per worker).
        self.reading = 0
        self._jobs: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def waiting(self) -> int:
        """Requests queued behind the running batch."""
        return len(self._jobs)

    @property
    def full(self) -> bool:
        """True when one more request would be refused (bodies being read count as waiting)."""
        return len(self._jobs) + self.reading >= self.queue

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # Created lazily inside the serving loop (the app is built before uvicorn's loop runs;
        # a test client may run each request on a new loop: start again there).
        self._loop = loop
        self._wake = asyncio.Event()
        self._jobs.clear()
        if self.in_thread and self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="lenet-predict")
        self._task = loop.create_task(self._consume())

    async def predict(
        self,
        data: bytes,
        top_k: int,
        min_confidence: float | None,
        disconnected: Callable[[], Awaitable] | None = None,
    ) -> Prediction:
        """Queue one image and wait for its :class:`Prediction`.

        Raises :class:`ServerBusy` at once when ``queue`` requests already wait, and
        :class:`ClientGone` when ``disconnected()`` (an awaitable that completes when the
        client goes away) finishes first; the job is then skipped, not computed.
        """
        return await self._submit(lambda fut: _Job(data, top_k, min_confidence, fut), disconnected)

    async def call(
        self, fn: Callable[[], object], disconnected: Callable[[], Awaitable] | None = None
    ):
        """Run ``fn()`` in its turn in the same queue and thread as the predictions (the same
        bound, 503 and dropped-when-gone rules): how ``/api/read`` shares the guards."""
        return await self._submit(lambda fut: _Job(b"", 0, None, fut, fn), disconnected)

    async def _submit(self, make_job: Callable, disconnected: Callable[[], Awaitable] | None):
        """Queue ``make_job(future)`` (or raise :class:`ServerBusy`) and wait for its result."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._start(loop)
        if self.full:
            raise ServerBusy(f"{len(self._jobs)} requests are already waiting")
        fut = loop.create_future()
        self._jobs.append(make_job(fut))
        self._wake.set()
        return await self._wait(fut, disconnected)

    async def _wait(self, fut: asyncio.Future, disconnected: Callable[[], Awaitable] | None):
        """The job's result, or :class:`ClientGone` when ``disconnected()`` finishes first."""
        if disconnected is None:
            return await fut
        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait((fut, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()  # it would otherwise wait for a disconnect that may never come
            if not fut.done():
                fut.cancel()  # the consumer skips cancelled jobs
        if fut.cancelled():
            raise ClientGone()
        return fut.result()

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
            batch: list[_Job] = []
            while self._jobs and len(batch) < self.max_batch:
                job = self._jobs.popleft()
                if job.future.cancelled():
                    self.dropped += 1
                else:
                    batch.append(job)
            if not batch:
                continue
            self.running = len(batch)
            try:
                if self._pool is not None:
                    preds = await loop.run_in_executor(self._pool, self._compute, batch)
                else:
                    preds = self._compute(batch)
            except Exception as e:  # a bug: every waiting request answers 500, the loop goes on
                log.exception("prediction batch failed")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
            else:
                for job, pred in zip(batch, preds, strict=True):
                    if job.future.done():
                        continue
                    if isinstance(pred, _Failed):  # one call's bug answers 500 for that one
                        job.future.set_exception(pred.error)
                    else:
                        job.future.set_result(pred)
            finally:
                self.running = 0
            if self._pool is None:
                await asyncio.sleep(0)  # computed on the loop: let it read requests in between

    def _compute(self, batch: list[_Job]) -> list:
        """Preprocess each image, then one network call per (top_k, min_confidence) group;
        ``call`` jobs run on their own, in order."""
        preds: list = [None] * len(batch)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(batch):
            if job.fn is not None:
                try:
                    preds[i] = job.fn()
                except Exception as e:
                    log.exception("a queued call failed")
                    preds[i] = _Failed(e)
                continue
            preds[i] = self.predictor.prepare(job.data, self.max_pixels)
            groups.setdefault((job.top_k, job.min_confidence), []).append(i)
        for (top_k, min_confidence), idx in groups.items():
            self.predictor.classify([preds[i] for i in idx], top_k, min_confidence)
        return preds

    def close(self) -> None:
        """Stop the consumer and its thread (pending requests are cancelled)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for job in self._jobs:
            job.future.cancel()
        self._jobs.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
