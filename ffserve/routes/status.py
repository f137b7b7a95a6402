"""Ollama's status streams (``/api/pull``, ``/api/push``, ``/api/create``): a blocking job in a thread,
what it reports sent as NDJSON lines (``{"status": …}``, with ``digest``/``total``/``completed`` for
transfers), then ``{"status": "success"}`` or ``{"error": …}``; with ``"stream": false`` one JSON answer
whose status code says how it went.

The job runs in a worker thread, so a long build or transfer never blocks the event loop; a client that
goes away stops the stream, not the job (which then finishes and stores its result, as in Ollama).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from starlette.responses import Response

from ffserve.encoding import JSONResponse
from ffserve.errors import ServeError
from ffserve.streaming import EventStream, ndjson

Emit = Callable[[dict[str, object]], None]
"""Called from the job's thread with each status message."""


async def status_response(
    stream: bool, job: Callable[[Emit], None], failure: Callable[[BaseException], ServeError]
) -> Response:
    """Run ``job(emit)`` in a thread; answer with its status stream (or, unstreamed, its outcome).
    ``failure`` turns the job's exception into the error the client gets."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, object] | None] = asyncio.Queue()

    def emit(message: dict[str, object]) -> None:
        if stream:
            loop.call_soon_threadsafe(queue.put_nowait, message)

    task = asyncio.ensure_future(asyncio.to_thread(job, emit))

    def finished(t: asyncio.Future[None]) -> None:
        if not t.cancelled():
            t.exception()  # retrieved here: a stream whose client left does not log it as lost
        queue.put_nowait(None)

    task.add_done_callback(finished)

    if not stream:
        try:
            await task
        except Exception as exc:
            raise failure(exc) from None
        return JSONResponse({"status": "success"})

    async def chunks() -> AsyncIterator[bytes]:
        while (message := await queue.get()) is not None:
            yield ndjson(message)
        exc = task.exception()
        yield ndjson({"error": failure(exc).message} if exc else {"status": "success"})

    async def nothing() -> None:
        return None

    return EventStream(chunks(), nothing, "application/x-ndjson")  # type: ignore[return-value]
