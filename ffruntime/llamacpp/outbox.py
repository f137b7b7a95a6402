"""The events of one engine step, handed to their event loops together, just before the next decode.

A sequence's events (tokens, its end) go to the asyncio loop of the request that waits for them. Posted
one at a time (``loop.call_soon_threadsafe`` per token) each post wrote the loop's wake-up pipe, released
the GIL in that write, and the woken loop took the GIL while the engine thread still had Python work to
do before its next ``llama_decode`` (sampling the other sequences, building the batch): the two threads
took turns per token. The engine collects a step's events here instead and :meth:`Outbox.flush` hands
them, right before the next decode, to a poster thread, without releasing the GIL (a
``queue.SimpleQueue`` put); the poster runs once the engine thread releases the GIL for the length of
the step, and posts them with one ``call_soon_threadsafe`` per loop, so the loop streams the tokens
while the model computes. Posting from the engine thread itself cost it 60–110 µs a step (measured
around the flush): the pipe write let the woken loop take the GIL first.

On uvloop's loop (what ``ff serve`` runs when ``uvloop`` is installed, as its ``serve`` extra does) the
engine thread posts itself, with no poster: uvloop's ``call_soon_threadsafe`` wakes the loop
(``uv_async_send``, an eventfd write) without releasing the GIL, so the woken loop waits for the GIL
until the engine enters ``llama_decode``, which is what the poster thread was for. That saves the
poster's wake-up each step: measured per streamed token of one stream (``/proc/<pid>/task/*/schedstat``,
SmolLM2 Q4_0, shared machine), the poster cost 76–118 µs of CPU and 2–3 context switches, time taken
from the decode's own threads on a 2-core machine.

A job without a loop (``Job.loop`` ``None``: a caller that is not asyncio) gets its events at once
through its thread-safe ``emit``, as before.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
from collections.abc import Callable

Put = Callable[[object], None]


def _deliver(items: list[tuple[Put, object]]) -> None:
    for put, item in items:
        put(item)


def posts_without_gil_release(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop.call_soon_threadsafe`` keeps the GIL while it wakes the loop (uvloop's does;
    asyncio's writes its self-pipe through ``socket.send``, which releases it)."""
    return type(loop).__module__.startswith("uvloop")


class Outbox:
    """Events waiting for the next hand-off, per event loop (one engine thread uses it)."""

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[Put, object]]] = {}
        self._posts: queue.SimpleQueue[dict[asyncio.AbstractEventLoop, list[tuple[Put, object]]] | None]
        self._posts = queue.SimpleQueue()
        self._poster: threading.Thread | None = None

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, loop: asyncio.AbstractEventLoop, put: Put, item: object) -> None:
        self._items.setdefault(loop, []).append((put, item))

    def flush(self) -> None:
        """Post every waiting event: to a uvloop loop from this thread, else through the poster thread
        (started on first use)."""
        if not self._items:
            return
        items, self._items = self._items, {}
        for loop in [lp for lp in items if posts_without_gil_release(lp)]:
            with contextlib.suppress(RuntimeError):  # that loop is closed: its requests are gone
                loop.call_soon_threadsafe(_deliver, items.pop(loop))
        if not items:
            return
        if self._poster is None:
            self._poster = threading.Thread(target=self._post, name="llamacpp-outbox", daemon=True)
            self._poster.start()
        self._posts.put(items)

    def close(self) -> None:
        """Post what is waiting, then stop the poster."""
        self.flush()
        if self._poster is not None:
            self._posts.put(None)
            self._poster.join()
            self._poster = None

    def _post(self) -> None:
        while (items := self._posts.get()) is not None:
            for loop, pairs in items.items():  # one call per loop
                with contextlib.suppress(RuntimeError):  # that loop is closed: its requests are gone
                    loop.call_soon_threadsafe(_deliver, pairs)


class Inbox:
    """One request's events on its event loop: :class:`Outbox` posts ``put`` there, the request awaits
    :meth:`get`. A deque and at most one waiter: ``asyncio.Queue`` does bookkeeping a stream never uses
    (unfinished-task counts, an ``Event``, the putters' list), a dozen Python calls per token on the
    event loop, which runs beside the decode."""

    def __init__(self) -> None:
        self._items: collections.deque[object] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: object) -> None:
        """Add an event (on the loop's thread) and wake the waiting :meth:`get`."""
        self._items.append(item)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> object:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()
