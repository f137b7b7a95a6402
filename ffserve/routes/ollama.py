"""Ollama's inference routes: /api/generate, /api/chat, /api/embed, /api/embeddings (NDJSON streams)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ffruntime.constraints import format_constraint
from ffruntime.runtime import (
    CancelFlag,
    Capability,
    ChatMessage,
    Done,
    Embeddings,
    EmbedInput,
    GenerationRequest,
    Token,
    TokenLogprob,
    ToolCall,
)
from ffserve import logprobs, toolcalls
from ffserve.encoding import JSONResponse, dumps
from ffserve.errors import BadRequest, NotSupported
from ffserve.generation import GONE, ClientGone, Generation, run_to_end, until_disconnected
from ffserve.state import AppState, app_state
from ffserve.streaming import EventStream, ndjson
from ffserve.wire import parse_body
from ffserve.wire.media import ollama_image
from ffserve.wire.ollama import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Message,
    now,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


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


async def _load_only(e: AppState, model: str, keep_alive: float | None, body: dict[str, object]) -> Response:
    """An empty prompt loads the model (or, with keep_alive 0, unloads it), as Ollama does."""
    if keep_alive == 0:
        await e.scheduler.unload(model)
        return JSONResponse(
            {"model": model, "created_at": now(), **body, "done": True, "done_reason": "unload"}
        )
    e.scheduler.keep(await e.scheduler.get(model, keep_alive), keep_alive)
    return JSONResponse({"model": model, "created_at": now(), **body, "done": True, "done_reason": "load"})


def _wire_calls(calls: list[ToolCall]) -> list[dict[str, object]]:
    return [
        {"id": c.id, "function": {"index": i, "name": c.name, "arguments": dict(c.arguments)}}
        for i, c in enumerate(calls)
    ]


async def _answer(
    request: Request, e: AppState, gen: Generation, stream: bool, shape: str, model: str
) -> Response:
    t0 = time.perf_counter_ns()
    was_loaded = e.scheduler.is_loaded(model)
    want_logprobs = gen.request.logprobs
    names = toolcalls.tool_names(gen.request.tools)

    def piece(
        text: str, calls: list[ToolCall] | None = None, lps: Sequence[TokenLogprob] = ()
    ) -> dict[str, object]:
        out: dict[str, object]
        if shape == "chat":
            message: dict[str, object] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = _wire_calls(calls)
            out = {"message": message}
        else:
            out = {"response": text}
        if want_logprobs and lps:
            out["logprobs"] = logprobs.ollama(lps)
        return out

    def final(done: Done, body: dict[str, object]) -> dict[str, object]:
        load_ns = 0 if was_loaded or gen.model is None else gen.model.load_ns
        extra: dict[str, object] = {} if shape == "chat" else {"context": list(done.context)}
        return {
            "model": model,
            "created_at": now(),
            **body,
            "done": True,
            **extra,
            **_durations(gen, done, t0, load_ns),
        }

    if not stream:
        try:
            answer = await run_to_end(request, gen)
        except ClientGone:
            return GONE
        content, calls = toolcalls.parse(answer.text, names) if names else (answer.text, [])
        return JSONResponse(final(answer.done, piece(content, calls, answer.logprobs)))
    try:
        await until_disconnected(request, gen.start())
    except ClientGone:
        await gen.aclose()
        return GONE
    parser = toolcalls.StreamParser(names) if names else None

    head = b'{"model":' + dumps(model) + b',"created_at":"'

    def chunk(body: dict[str, object]) -> bytes:
        # {"model", "created_at", **body, "done": false}: the fixed parts rendered once a request
        return head + now().encode() + b'",' + dumps(body)[1:-1] + b',"done":false}\n'

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for ev in gen:
                if isinstance(ev, Token):
                    text = parser.feed(ev.text) if parser else ev.text
                    if text or (want_logprobs and ev.logprobs):
                        yield chunk(piece(text, None, ev.logprobs))
                    continue
                if parser is not None:
                    content, calls = parser.finish()
                    if content or calls:
                        yield chunk(piece(content, calls))
                yield ndjson(final(ev, piece("")))
        except Exception as exc:  # headers are sent: report in the stream, as Ollama does
            yield ndjson({"error": str(exc)})

    return EventStream(chunks(), gen.aclose, "application/x-ndjson")  # type: ignore[return-value]


def _logprobs(body: GenerateRequest | ChatRequest) -> dict[str, Any]:
    return {"logprobs": body.logprobs or body.top_logprobs > 0, "top_logprobs": body.top_logprobs}


async def generate(request: Request) -> Response:
    e = app_state(request)
    body = await parse_body(request, GenerateRequest)
    if not body.prompt and not body.raw:
        return await _load_only(e, body.model, body.keep_alive, {"response": ""})
    req = GenerationRequest(
        prompt=body.prompt,
        media=tuple(ollama_image(b, f"images.{i}") for i, b in enumerate(body.images or ())),
        system=body.system,
        template=body.template,
        raw=body.raw,
        suffix=body.suffix,
        context=body.context or (),
        options=body.options.params(),
        constraint=format_constraint(body.format),
        **_logprobs(body),
    )
    gen = Generation(
        e.scheduler, e.metrics, body.model, req, keep_alive=body.keep_alive, need=Capability.GENERATE
    )
    return await _answer(request, e, gen, body.stream, "generate", body.model)


def _message(i: int, m: Message) -> ChatMessage:
    calls = tuple(ToolCall(c.function.name, c.function.arguments, c.id or "") for c in m.tool_calls or ())
    images = tuple(ollama_image(b, f"messages.{i}.images.{j}") for j, b in enumerate(m.images or ()))
    return ChatMessage(
        m.role, m.content or "", tool_calls=calls, tool_name=m.tool_name, tool_call_id=m.tool_call_id,
        media=images,
    )


async def chat(request: Request) -> Response:
    e = app_state(request)
    body = await parse_body(request, ChatRequest)
    if not body.messages:
        return await _load_only(
            e, body.model, body.keep_alive, {"message": {"role": "assistant", "content": ""}}
        )
    tools, forced = toolcalls.plan(body.tools, body.tool_choice or body.options.tool_choice)
    req = GenerationRequest(
        messages=[_message(i, m) for i, m in enumerate(body.messages)],
        options=body.options.params(),
        constraint=forced or format_constraint(body.format),
        tools=tools,
        **_logprobs(body),
    )
    gen = Generation(
        e.scheduler, e.metrics, body.model, req, keep_alive=body.keep_alive, need=Capability.CHAT
    )
    return await _answer(request, e, gen, body.stream, "chat", body.model)


def shorten(vectors: npt.NDArray[np.float32], dimensions: int | None) -> npt.NDArray[np.float32]:
    """The first ``dimensions`` components of each vector, renormalised to unit length (Matryoshka)."""
    if dimensions is None:
        return vectors
    import numpy as np

    if dimensions > vectors.shape[1]:
        raise BadRequest(f"dimensions {dimensions} is more than the model's {vectors.shape[1]}")
    head = vectors[:, :dimensions].astype(np.float64)
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return np.ascontiguousarray(head / np.where(norms > 0, norms, 1), np.float32)  # a zero vector stays zero


async def embed_texts(
    request: Request,
    e: AppState,
    model: str,
    texts: Sequence[EmbedInput],
    truncate: bool,
    keep_alive: float | None,
    dimensions: int | None = None,
) -> tuple[Embeddings, int]:
    """Embeddings of ``texts`` (``dimensions`` long) through the scheduler; shared with the OpenAI route."""
    was_loaded = e.scheduler.is_loaded(model)
    cancel = CancelFlag()

    async def work() -> tuple[Embeddings, int]:
        async with e.scheduler.slot(model, keep_alive) as loaded:
            rt = loaded.embed_runtime
            if rt is None:
                raise NotSupported(f"{loaded.name} does not produce embeddings")
            result = await rt.embed(texts, truncate=truncate, cancel=cancel)
            e.metrics.of(loaded.name).prompt_tokens.inc(result.prompt_tokens)
            result = Embeddings(shorten(result.vectors, dimensions), result.prompt_tokens)
            return result, 0 if was_loaded else loaded.load_ns

    try:
        return await until_disconnected(request, work())
    except ClientGone:
        cancel.set()
        e.metrics.cancelled.labels(model).inc()
        raise


async def embed(request: Request) -> Response:
    e = app_state(request)
    body = await parse_body(request, EmbedRequest)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    t0 = time.perf_counter_ns()
    try:
        result, load_ns = await embed_texts(
            request, e, body.model, texts, body.truncate, body.keep_alive, body.dimensions
        )
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
    e = app_state(request)
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
