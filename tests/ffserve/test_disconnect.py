"""ffserve.generation.until_disconnected: the work runs in the caller's task and a disconnect cancels it."""

from __future__ import annotations

import asyncio

import pytest

from ffserve.generation import ClientGone, until_disconnected


class FakeRequest:
    """What until_disconnected reads of a Starlette request: ``receive``, here gated by an event."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, str]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def test_the_answer_comes_back_and_the_watcher_stops() -> None:
    async def scenario() -> None:
        request = FakeRequest()
        before = len(asyncio.all_tasks())

        async def work() -> int:
            await asyncio.sleep(0.01)
            return 42

        assert await until_disconnected(request, work()) == 42  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == before  # no watcher left behind

    asyncio.run(scenario())


def test_a_disconnect_cancels_the_work_and_the_caller_goes_on() -> None:
    async def scenario() -> None:
        request = FakeRequest()
        stopped = asyncio.Event()

        async def work() -> int:
            try:
                await asyncio.sleep(10)
            finally:
                stopped.set()
            return 1

        asyncio.get_running_loop().call_later(0.02, request.gone.set)
        with pytest.raises(ClientGone):
            await until_disconnected(request, work())  # type: ignore[arg-type]
        assert stopped.is_set()
        await asyncio.sleep(0.01)  # the caller was not left with a cancel pending: it can still await
        current = asyncio.current_task()
        assert current is not None and current.cancelling() == 0

    asyncio.run(scenario())


def test_a_cancel_from_outside_stays_a_cancel() -> None:
    async def scenario() -> None:
        request = FakeRequest()

        async def work() -> int:
            await asyncio.sleep(10)
            return 1

        task = asyncio.ensure_future(until_disconnected(request, work()))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_an_error_of_the_work_reaches_the_caller() -> None:
    async def scenario() -> None:
        async def work() -> int:
            raise ValueError("bad input")

        with pytest.raises(ValueError, match="bad input"):
            await until_disconnected(FakeRequest(), work())  # type: ignore[arg-type]

    asyncio.run(scenario())
