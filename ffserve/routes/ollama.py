"""Ollama's inference routes: /api/generate, /api/chat, /api/embed, /api/embeddings (NDJSON streams)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ffruntime.runtime import (
    CancelFlag,
    Capability,
    ChatMessage,
    Done,
    Embeddings,
    EmbedRuntime,
    Format,
    GenerationRequest,
    Token,
)
from ffserve.errors import NotSupported
from ffserve.generation import ClientGone, Generation, run_to_end, until_disconnected
from ffserve.state import Engine, engine
from ffserve.streaming import EventStream, ndjson
from ffserve.wire import parse_body
from ffserve.wire.ollama import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    FormatField,
    GenerateRequest,
    now,
)

GONE = Response(status_code=499)


def _format(fmt: FormatField) -> Format:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return "json"
    assert isinstance(fmt, dict)
    return fmt


def _durations(gen: Generation, done: Done, t0: int, load_ns: int) -> dict[str, object]:
    return {
        "done_reason": done.reason,
        "total_duration": time.perf_counter_ns() - t0,
        "load_duration": load_ns,
        "prompt_eval_count": done.prompt_tokens,
        "prompt_eval_duration": done.prompt_eval_ns,
        "eval_count": done.completion_tokens,
        "eval_duration": done.eval_ns,
    }


async def _load_only(e: Engine, model: str, keep_alive: float | None, body: dict[str, object]) -> Response:
    """An empty prompt loads the model (or, with keep_alive 0, unloads it), as Ollama does."""
    if keep_alive == 0:
        await e.scheduler.unload(model)
        return JSONResponse(
            {"model": model, "created_at": now(), **body, "done": True, "done_reason": "unload"}
        )
    e.scheduler.keep(await e.scheduler.get(model, keep_alive), keep_alive)
    return JSONResponse({"model": model, "created_at": now(), **body, "done": True, "done_reason": "load"})


async def _answer(
    request: Request, e: Engine, gen: Generation, stream: bool, shape: str, model: str
) -> Response:
    t0 = time.perf_counter_ns()
    was_loaded = e.scheduler.is_loaded(model)

    def piece(text: str) -> dict[str, object]:
        if shape == "chat":
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    def final(done: Done, text: str) -> dict[str, object]:
        load_ns = 0 if was_loaded or gen.model is None else gen.model.load_ns
        extra: dict[str, object] = {} if shape == "chat" else {"context": list(done.context)}
        return {
            "model": model,
            "created_at": now(),
            **piece(text),
            "done": True,
            **extra,
            **_durations(gen, done, t0, load_ns),
        }

    if not stream:
        try:
            text, done = await run_to_end(request, gen)
        except ClientGone:
            return GONE
        return JSONResponse(final(done, text))
    try:
        await until_disconnected(request, gen.start())
    except ClientGone:
        await gen.aclose()
        return GONE

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for ev in gen:
                if isinstance(ev, Token):
                    yield ndjson({"model": model, "created_at": now(), **piece(ev.text), "done": False})
                else:
                    yield ndjson(final(ev, ""))
        except Exception as exc:  # headers are sent: report in the stream, as Ollama does
            yield ndjson({"error": str(exc)})

    return EventStream(chunks(), gen.aclose, "application/x-ndjson")  # type: ignore[return-value]


async def generate(request: Request) -> Response:
    e = engine(request)
    body = await parse_body(request, GenerateRequest)
    if not body.prompt and not body.raw:
        return await _load_only(e, body.model, body.keep_alive, {"response": ""})
    if body.images:
        raise NotSupported("images are not supported by this model's runtime")
    req = GenerationRequest(
        prompt=body.prompt,
        system=body.system,
        template=body.template,
        raw=body.raw,
        suffix=body.suffix,
        context=body.context or (),
        options=dict(body.options),
        format=_format(body.format),
    )
    gen = Generation(
        e.scheduler, e.metrics, body.model, req, keep_alive=body.keep_alive, need=Capability.GENERATE
    )
    return await _answer(request, e, gen, body.stream, "generate", body.model)


async def chat(request: Request) -> Response:
    e = engine(request)
    body = await parse_body(request, ChatRequest)
    if not body.messages:
        return await _load_only(
            e, body.model, body.keep_alive, {"message": {"role": "assistant", "content": ""}}
        )
    if any(m.images for m in body.messages):
        raise NotSupported("images are not supported by this model's runtime")
    if body.tools:
        raise NotSupported("tools (function calling) are not supported by ff serve yet")
    req = GenerationRequest(
        messages=[ChatMessage(m.role, m.content) for m in body.messages],
        options=dict(body.options),
        format=_format(body.format),
    )
    gen = Generation(
        e.scheduler, e.metrics, body.model, req, keep_alive=body.keep_alive, need=Capability.CHAT
    )
    return await _answer(request, e, gen, body.stream, "chat", body.model)


async def embed_texts(
    request: Request, e: Engine, model: str, texts: list[str], truncate: bool, keep_alive: float | None
) -> tuple[Embeddings, int]:
    """Embeddings of ``texts`` through the scheduler; shared with the OpenAI route."""
    was_loaded = e.scheduler.is_loaded(model)
    cancel = CancelFlag()

    async def work() -> tuple[Embeddings, int]:
        async with e.scheduler.slot(model, keep_alive) as loaded:
            rt = loaded.runtime
            if Capability.EMBED not in rt.capabilities or not isinstance(rt, EmbedRuntime):
                raise NotSupported(f"{loaded.name} does not produce embeddings")
            result = await rt.embed(texts, truncate=truncate, cancel=cancel)
            e.metrics.prompt_tokens.labels(loaded.name).inc(result.prompt_tokens)
            return result, 0 if was_loaded else loaded.load_ns

    try:
        return await until_disconnected(request, work())
    except ClientGone:
        cancel.set()
        e.metrics.cancelled.labels(model).inc()
        raise


async def embed(request: Request) -> Response:
    e = engine(request)
    body = await parse_body(request, EmbedRequest)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    t0 = time.perf_counter_ns()
    try:
        result, load_ns = await embed_texts(request, e, body.model, texts, body.truncate, body.keep_alive)
    except ClientGone:
        return GONE
    return JSONResponse(
        {
            "model": body.model,
            "embeddings": result.vectors,
            "total_duration": time.perf_counter_ns() - t0,
            "load_duration": load_ns,
            "prompt_eval_count": result.prompt_tokens,
        }
    )


async def embeddings(request: Request) -> Response:
    e = engine(request)
    body = await parse_body(request, EmbeddingsRequest)
    try:
        result, _ = await embed_texts(request, e, body.model, [body.prompt], True, body.keep_alive)
    except ClientGone:
        return GONE
    return JSONResponse({"embedding": result.vectors[0]})


ROUTES = [
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
]
