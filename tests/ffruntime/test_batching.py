"""ffruntime.batching: concurrent submissions run as one batch, bounded, by key, cancellable."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from ffruntime.batching import Batcher
from ffruntime.runtime import CancelFlag


def test_concurrent_items_run_together_and_each_gets_its_own_answer() -> None:
    calls: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        return [x * 10 for x in items]

    async def main() -> list[int]:
        b: Batcher[int, int] = Batcher(run, max_batch=8, max_wait=0.05)
        try:
            return list(await asyncio.gather(*(b.submit(i) for i in range(20))))
        finally:
            await b.close()

    assert asyncio.run(main()) == [i * 10 for i in range(20)]
    assert [len(c) for c in calls] == [8, 8, 4]  # bounded batches, in order of arrival


def test_keys_are_never_mixed_and_sizes_bound_the_batch() -> None:
    calls: list[list[str]] = []

    def run(items: Sequence[str]) -> list[str]:
        calls.append(list(items))
        return [s.upper() for s in items]

    async def main() -> list[str]:
        b: Batcher[str, str] = Batcher(run, max_batch=4, max_wait=0.05, size=len, key=lambda s: s[0])
        try:
            return list(await asyncio.gather(*(b.submit(s) for s in ["aa", "bb", "aaa", "b", "a"])))
        finally:
            await b.close()

    assert asyncio.run(main()) == ["AA", "BB", "AAA", "B", "A"]
    assert all(len({s[0] for s in c}) == 1 for c in calls)
    assert all(sum(map(len, c)) <= 4 or len(c) == 1 for c in calls)


def test_a_failing_batch_fails_its_items_and_the_next_batch_runs() -> None:
    def run(items: Sequence[int]) -> list[int]:
        if 0 in items:
            raise ValueError("zero")
        return list(items)

    async def main() -> None:
        b: Batcher[int, int] = Batcher(run, max_batch=1, max_wait=0)
        with pytest.raises(ValueError, match="zero"):
            await b.submit(0)
        assert await b.submit(5) == 5
        await b.close()

    asyncio.run(main())


def test_cancelled_items_are_skipped() -> None:
    gate = threading.Event()
    seen: list[int] = []

    def run(items: Sequence[int]) -> list[int]:
        gate.wait(5)
        seen.extend(items)
        return list(items)

    async def main() -> None:
        b: Batcher[int, int] = Batcher(run, max_batch=1, max_wait=0)
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.05)  # 1 is running; 2 waits behind it
        flag = CancelFlag()
        second = asyncio.ensure_future(b.submit(2, flag))
        await asyncio.sleep(0.01)
        flag.set()
        gate.set()
        assert await first == 1
        await asyncio.sleep(0.05)
        assert not second.done()
        second.cancel()
        await b.close()

    asyncio.run(main())
    assert seen == [1]


def test_items_that_are_arrays_batch_too() -> None:
    import numpy as np

    def run(items: Sequence[np.ndarray]) -> list[float]:
        return [float(x.sum()) for x in items]

    async def main() -> list[float]:
        b: Batcher[np.ndarray, float] = Batcher(run, max_batch=4, max_wait=0.05)
        try:
            return list(await asyncio.gather(*(b.submit(np.full(3, i)) for i in range(6))))
        finally:
            await b.close()

    assert asyncio.run(main()) == [3.0 * i for i in range(6)]


def test_a_quick_lone_item_runs_on_the_loop_and_anything_else_in_a_thread() -> None:
    threads: list[tuple[int, bool]] = []
    slow = threading.Event()

    def run(items: Sequence[int]) -> list[int]:
        threads.append((len(items), threading.get_ident() == loop_thread))
        if slow.is_set():
            threading.Event().wait(0.02)  # longer than inline_seconds
        return list(items)

    async def main() -> None:
        b: Batcher[int, int] = Batcher(run, max_batch=8, max_wait=0, inline_seconds=0.01)
        try:
            assert await b.submit(1) == 1  # first lone run: its time is unknown, so a thread
            assert await b.submit(2) == 2  # measured quick: the loop
            await asyncio.gather(*(b.submit(i) for i in range(3, 7)))  # batches: always a thread
            slow.set()
            await b.submit(7)  # the loop (the last lone run was quick), measured slow
            await b.submit(8)  # so a thread again
        finally:
            await b.close()

    loop_thread = threading.get_ident()
    asyncio.run(main())
    lone = [on_loop for n, on_loop in threads if n == 1]
    assert lone[:2] == [False, True] and lone[-2:] == [True, False]
    assert all(not on_loop for n, on_loop in threads if n > 1)


def test_requests_that_need_a_few_loop_turns_to_arrive_join_the_batch() -> None:
    """A burst whose items reach ``submit`` a few event-loop turns apart (as parsed HTTP requests do)
    runs as one batch, not one by one, with no wait configured."""
    sizes: list[int] = []

    def run(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        return list(items)

    async def main() -> None:
        b: Batcher[int, int] = Batcher(run, max_batch=8, max_wait=0)

        async def late(i: int, turns: int) -> int:
            for _ in range(turns):
                await asyncio.sleep(0)
            return await b.submit(i)

        try:
            got = await asyncio.gather(*(late(i, i % 3) for i in range(6)))
            assert list(got) == list(range(6))
        finally:
            await b.close()

    asyncio.run(main())
    assert sizes == [6]
