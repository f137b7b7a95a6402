"""The events of one engine step, handed to their event loops together, just before the next decode.

A sequence's events (tokens, its end) go to the asyncio loop of the request that waits for them. Posted
one at a time (``loop.call_soon_threadsafe`` per token) each post wrote the loop's wake-up pipe, released
the GIL in that write, and the woken loop took the GIL while the engine thread still had Python work to
do before its next ``llama_decode`` (sampling the other sequences, building the batch): the two threads
took turns per token. The engine collects a step's events here instead and :meth:`Outbox.flush` posts
them with one call per loop right before the next decode, when the engine thread releases the GIL for
the length of the step, so the loop streams the tokens while the model computes.

A job without a loop (``Job.loop`` ``None``: a caller that is not asyncio) gets its events at once
through its thread-safe ``emit``, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

Put = Callable[[object], None]


def _deliver(items: list[tuple[Put, object]]) -> None:
    for put, item in items:
        put(item)


class Outbox:
    """Events waiting for the next hand-off, per event loop (one engine thread uses it)."""

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[Put, object]]] = {}

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, loop: asyncio.AbstractEventLoop, put: Put, item: object) -> None:
        self._items.setdefault(loop, []).append((put, item))

    def flush(self) -> None:
        """Post every waiting event to its loop: one ``call_soon_threadsafe`` per loop."""
        items, self._items = self._items, {}
        for loop, pairs in items.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: its requests are gone
                loop.call_soon_threadsafe(_deliver, pairs)
