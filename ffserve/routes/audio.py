"""OpenAI's audio routes: ``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations``.

The model must have the transcription capability (a ``TASK transcribe`` variant on ctranslate2). The
audio is decoded before the answer starts, so a bad file is a 4xx (400 not audio, empty or truncated;
413 too long or too large), never a broken stream. ``stream=true`` answers Server-Sent Events, one
``transcript.text.delta`` per decoded segment and a final ``transcript.text.done``; the model's slot is
held until the stream ends or the client goes away (which stops the transcription).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ffruntime.runtime import (
    Capability,
    Segment,
    TranscribeRuntime,
    TranscriptionInfo,
    TranscriptionRequest,
    piece,
)
from ffserve.encoding import JSONResponse
from ffserve.errors import NotSupported
from ffserve.generation import GONE, ClientGone, until_disconnected
from ffserve.scheduler import Loaded
from ffserve.state import AppState, app_state
from ffserve.streaming import EventStream, sse
from ffserve.wire.audio import AudioForm, parse_form, srt, text_of, verbose, vtt


def _runtime(model: Loaded) -> TranscribeRuntime:
    rt = model.runtime
    if Capability.TRANSCRIBE not in rt.capabilities or not isinstance(rt, TranscribeRuntime):
        raise NotSupported(f"{model.name} is not a speech-to-text model (TASK transcribe)")
    return rt


def _answer(form: AudioForm, task: str, info: TranscriptionInfo, segments: list[Segment]) -> Response:
    fmt = form.response_format
    if fmt == "text":
        return PlainTextResponse(text_of(segments) + "\n")
    if fmt == "srt":
        return PlainTextResponse(srt(segments))
    if fmt == "vtt":
        return PlainTextResponse(vtt(segments), media_type="text/vtt")
    if fmt == "verbose_json":
        return JSONResponse(verbose(task, info, segments, form.granularities))
    usage = {"type": "duration", "seconds": max(1, round(info.duration))}
    return JSONResponse({"text": text_of(segments), "usage": usage})


def _request(form: AudioForm, task: str) -> TranscriptionRequest:
    return TranscriptionRequest(
        audio=form.audio,
        task="translate" if task == "translate" else "transcribe",
        language=form.language,
        prompt=form.prompt,
        temperature=form.temperature,
        words="word" in form.granularities and form.response_format == "verbose_json",
    )


async def _whole(request: Request, e: AppState, form: AudioForm, task: str) -> Response:
    req = _request(form, task)

    async def work() -> tuple[TranscriptionInfo, list[Segment], str]:
        async with e.scheduler.slot(form.model) as model:
            info, segments = await _runtime(model).transcribe(req)
            return info, [s async for s in segments], model.name

    try:
        info, segments, _ = await until_disconnected(request, work())
    except ClientGone:
        req.cancel.set()
        e.metrics.cancelled.labels(form.model).inc()
        return GONE
    return _answer(form, task, info, segments)


async def _streamed(e: AppState, form: AudioForm) -> Response:
    """Decode first (errors are still a status), then stream the segments as they come."""
    req = _request(form, "transcribe")
    stack = contextlib.AsyncExitStack()
    try:
        model = await stack.enter_async_context(e.scheduler.slot(form.model))
        info, segments = await _runtime(model).transcribe(req)
    except BaseException:
        await stack.aclose()
        raise

    async def events() -> AsyncIterator[bytes]:
        parts: list[str] = []
        async for s in segments:
            delta = piece(s.text, not parts)
            parts.append(delta)
            yield sse({"type": "transcript.text.delta", "delta": delta})
        usage = {"type": "duration", "seconds": max(1, round(info.duration))}
        yield sse({"type": "transcript.text.done", "text": "".join(parts), "usage": usage})

    async def close() -> None:
        req.cancel.set()
        await stack.aclose()

    return EventStream(events(), close, "text/event-stream")  # type: ignore[return-value]


async def transcriptions(request: Request) -> Response:
    e = app_state(request)
    form = await parse_form(request, translation=False)
    if form.stream:
        return await _streamed(e, form)
    return await _whole(request, e, form, "transcribe")


async def translations(request: Request) -> Response:
    e = app_state(request)
    form = await parse_form(request, translation=True)
    return await _whole(request, e, form, "translate")


ROUTES = [
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/audio/translations", translations, methods=["POST"]),
]
