"""Requests that arrive together run as one batch: a bounded wait, a bounded batch, one worker.

A tensor backend (ONNX Runtime, TVM, TensorRT) runs a whole batch in about the time of a few single
items, so a server that gathers concurrent requests beats a loop of single calls. :class:`Batcher`
takes items from any number of coroutines; one worker takes the oldest item, waits at most
``max_wait`` seconds for more with the same ``key`` (items of another key — another shape — wait for
the next batch) until ``max_batch`` units are gathered, and runs them in a thread with one call of
``run``. While a batch runs, new items queue up, so under load batches fill without any wait.

A lone item (one unit) whose last lone run took less than ``inline_seconds`` runs on the event loop
itself: the hand-off to a thread and back cost 0.5 ms of a 2.3 ms MiniLM int8 sentence here, more than
the loop loses by waiting that long.

Before it takes a batch that is not full, the worker lets the event loop run ``GATHER_TURNS`` times
(no timer, no wait when nothing else is ready): requests whose bytes have already arrived get parsed
and join the batch. Without that, 16 clients whose requests came in a burst ran one by one on the
loop (MiniLM int8 served 287 sentences/s where the runtime alone did 1,459).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ffruntime.runtime import CancelFlag

I = TypeVar("I")  # noqa: E741 - item
O = TypeVar("O")  # noqa: E741 - output
GATHER_TURNS = 4  # event-loop turns a worker yields before it takes a batch that is not full


@dataclass(eq=False)  # jobs are compared by identity (items may be numpy arrays)
class _Job(Generic[I, O]):
    item: I
    key: Hashable
    size: int
    cancel: CancelFlag
    future: asyncio.Future[O]
    arrived: float = field(default_factory=time.monotonic)


class Batcher(Generic[I, O]):
    """``await submit(item)`` → ``run([... item ...])``'s output for it, run with its neighbours."""

    def __init__(
        self,
        run: Callable[[Sequence[I]], Sequence[O]],
        *,
        max_batch: int,
        max_wait: float,
        size: Callable[[I], int] = lambda _: 1,
        key: Callable[[I], Hashable] = lambda _: None,
        inline_seconds: float = 0.0,
    ) -> None:
        if max_batch < 1 or max_wait < 0:
            raise ValueError("max_batch must be ≥ 1 and max_wait ≥ 0")
        self._run, self.max_batch, self.max_wait = run, max_batch, max_wait
        self.inline_seconds = inline_seconds
        self._lone_seconds: float | None = None  # how long the last lone item took to run (unknown: a thread)
        self.inline_runs = 0  # lone items run on the event loop (for tests)
        self._size, self._key = size, key
        self._queue: list[_Job[I, O]] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0  # batches run (for tests and metrics)
        self.last_batch = 0  # units in the last batch

    async def submit(self, item: I, cancel: CancelFlag | None = None) -> O:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._work())
            self._worker.add_done_callback(self._worker_done)
        job: _Job[I, O] = _Job(
            item, self._key(item), self._size(item), cancel or CancelFlag(), loop.create_future()
        )
        self._queue.append(job)
        assert self._wake is not None
        self._wake.set()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            job.cancel.set()  # the worker skips it if it has not started
            raise

    def _take(self) -> list[_Job[I, O]]:
        """The oldest live job and the following ones of its key, up to ``max_batch`` units."""
        self._queue = [j for j in self._queue if not (j.cancel.is_set or j.future.done())]
        if not self._queue:
            return []
        key = self._queue[0].key
        batch: list[_Job[I, O]] = []
        total = 0
        for job in self._queue:
            if job.key != key:
                continue
            if batch and total + job.size > self.max_batch:
                break
            batch.append(job)
            total += job.size
        taken = {id(j) for j in batch}
        self._queue = [j for j in self._queue if id(j) not in taken]
        return batch

    def _units(self) -> int:
        key = self._queue[0].key
        return sum(j.size for j in self._queue if j.key == key)

    def _full(self) -> bool:
        return bool(self._queue) and self._units() >= self.max_batch

    def _ready(self) -> bool:
        if not self._queue:
            return False
        return self._units() >= self.max_batch or time.monotonic() - self._queue[0].arrived >= self.max_wait

    async def _work(self) -> None:
        assert self._wake is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            while not self._ready():
                self._wake.clear()
                left = self.max_wait - (time.monotonic() - self._queue[0].arrived)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(left, 0.0))
            for _ in range(GATHER_TURNS):
                if self._full():
                    break
                await asyncio.sleep(0)
            batch = self._take()
            if not batch:
                continue
            try:
                outputs = await self._execute(batch)
                if len(outputs) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} gave {len(outputs)} outputs")
            except Exception as exc:  # every job of the batch gets the error
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            self.batches += 1
            self.last_batch = sum(j.size for j in batch)
            for j, out in zip(batch, outputs, strict=True):
                if not j.future.done():
                    j.future.set_result(out)

    async def _execute(self, batch: list[_Job[I, O]]) -> Sequence[O]:
        items = [j.item for j in batch]
        if len(batch) > 1 or batch[0].size > 1:
            return await asyncio.to_thread(self._run, items)
        if self._lone_seconds is not None and self._lone_seconds < self.inline_seconds:
            self.inline_runs += 1
            return self._timed(items)
        return await asyncio.to_thread(self._timed, items)

    def _timed(self, items: list[I]) -> Sequence[O]:
        start = time.perf_counter()
        try:
            return self._run(items)
        finally:
            self._lone_seconds = time.perf_counter() - start

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        """A worker that died of a bug fails what waits, instead of leaving it hanging."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        for j in self._queue:
            if not j.future.done():
                j.future.set_exception(RuntimeError(f"the batch worker failed: {exc!r}"))
        self._queue = []

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for j in self._queue:
            if not j.future.done():
                j.future.cancel()
        self._queue = []
