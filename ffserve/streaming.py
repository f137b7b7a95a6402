"""A streaming response that always closes its source: NDJSON (Ollama) and SSE (OpenAI, Anthropic).

Starlette's StreamingResponse leaves a cancelled async generator to the garbage collector; here the
source's ``aclose`` runs when the stream ends, fails or the client disconnects, so the generation
stops within one token and its slot is freed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.types import Receive, Scope, Send

from ffserve.encoding import dumps


class EventStream:
    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        media_type: str,
        status: int = 200,
    ) -> None:
        self.chunks, self.on_close, self.media_type, self.status = chunks, on_close, media_type, status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", self.media_type.encode()), (b"cache-control", b"no-cache")]
        try:
            async with anyio.create_task_group() as tg:

                async def listen() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(listen)
                await send({"type": "http.response.start", "status": self.status, "headers": headers})
                async for chunk in self.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self.chunks, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
                await self.on_close()


def ndjson(obj: object) -> bytes:
    return dumps(obj) + b"\n"


def sse(obj: object) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def sse_event(event: str, obj: object) -> bytes:
    """One named SSE event (``event:`` and ``data:`` lines), as Anthropic's and the Responses API's are."""
    return b"event: " + event.encode() + b"\ndata: " + dumps(obj) + b"\n\n"
