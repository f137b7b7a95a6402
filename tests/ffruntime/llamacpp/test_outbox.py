"""The engine's outbox: a step's events reach their event loops, in order, on asyncio's loop (through
the poster thread) and on uvloop's (posted by the engine thread itself, no poster)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from ffruntime.llamacpp.outbox import Inbox, Outbox, posts_without_gil_release


def _run(new_loop: Callable[[], asyncio.AbstractEventLoop]) -> tuple[list[object], Outbox]:
    loop = new_loop()
    box = Outbox()
    got: asyncio.Queue[object] = asyncio.Queue()

    def engine() -> None:  # another thread, as the engine's
        for step in range(3):
            for k in range(2):
                box.add(loop, got.put_nowait, (step, k))
            box.flush()

    async def main() -> list[object]:
        t = threading.Thread(target=engine)
        t.start()
        out = [await asyncio.wait_for(got.get(), 10) for _ in range(6)]
        t.join()
        return out

    try:
        return loop.run_until_complete(main()), box
    finally:
        loop.close()


def test_asyncio_loop_events_go_through_the_poster_in_order() -> None:
    events, box = _run(asyncio.new_event_loop)
    assert events == [(s, k) for s in range(3) for k in range(2)]
    other = asyncio.new_event_loop()
    assert not posts_without_gil_release(other)
    other.close()
    assert box._poster is not None  # asyncio's self-pipe write releases the GIL: the poster posts
    box.close()


def test_uvloop_events_are_posted_by_the_engine_thread_in_order() -> None:
    uvloop = pytest.importorskip("uvloop")
    events, box = _run(uvloop.new_event_loop)
    assert events == [(s, k) for s in range(3) for k in range(2)]
    assert box._poster is None  # no poster thread was needed
    box.close()


def test_a_closed_loop_drops_its_events() -> None:
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    loop.close()
    box = Outbox()
    box.add(loop, lambda item: None, "token")
    box.flush()  # no error: the requests of a closed loop are gone
    assert not box


def test_an_inbox_hands_over_events_in_order_and_survives_a_cancelled_wait() -> None:
    async def main() -> None:
        box = Inbox()
        box.put("a")
        assert await box.get() == "a"
        waiting = asyncio.ensure_future(box.get())
        await asyncio.sleep(0)
        box.put("b")
        box.put("c")
        assert await waiting == "b"
        assert await box.get() == "c"
        cancelled = asyncio.ensure_future(box.get())
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        box.put("d")  # the cancelled waiter is skipped
        assert await asyncio.wait_for(box.get(), 1) == "d"

    asyncio.run(main())
