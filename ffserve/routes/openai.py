"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models (SSE)."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ffruntime.runtime import Capability, ChatMessage, Done, Format, GenerationRequest, Token
from ffserve.errors import ModelNotFound, NotSupported
from ffserve.generation import ClientGone, Generation, run_to_end, until_disconnected
from ffserve.models import canonical
from ffserve.routes.ollama import GONE, embed_texts
from ffserve.state import Engine, engine
from ffserve.streaming import SSE_DONE, EventStream, sse
from ffserve.wire import parse_body
from ffserve.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ResponseFormat
from registry.store import NotFoundError

FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


def _format(rf: ResponseFormat | None) -> Format:
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return "json"
    return rf.json_schema.schema_ if rf.json_schema and rf.json_schema.schema_ else "json"


def _usage(done: Done) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


async def _respond(
    request: Request, gen: Generation, *, model: str, chat: bool, stream: bool, include_usage: bool
) -> Response:
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"

    def choice(text: str | None, finish: str | None, delta: bool) -> dict[str, object]:
        if not chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if delta:
            return {
                "index": 0,
                "delta": {} if text is None else {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        return {
            "index": 0,
            "message": {"role": "assistant", "content": text or ""},
            "logprobs": None,
            "finish_reason": finish,
        }

    if not stream:
        try:
            text, done = await run_to_end(request, gen)
        except ClientGone:
            return GONE
        return JSONResponse(
            {
                "id": rid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [choice(text, FINISH[done.reason], False)],
                "usage": _usage(done),
            }
        )
    try:
        await until_disconnected(request, gen.start())
    except ClientGone:
        await gen.aclose()
        return GONE
    chunk_obj = "chat.completion.chunk" if chat else "text_completion"

    def frame(choices: list[dict[str, object]], usage: dict[str, int] | None = None) -> bytes:
        body: dict[str, object] = {
            "id": rid,
            "object": chunk_obj,
            "created": created,
            "model": model,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage
        return sse(body)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for ev in gen:
                if isinstance(ev, Token):
                    yield frame([choice(ev.text, None, True)])
                else:
                    yield frame([choice(None if chat else "", FINISH[ev.reason], True)])
                    if include_usage:
                        yield frame([], _usage(ev))
        except Exception as exc:  # headers are sent: report in the stream
            yield sse({"error": {"message": str(exc), "type": "server_error", "code": 500}})
        yield SSE_DONE

    return EventStream(chunks(), gen.aclose, "text/event-stream")  # type: ignore[return-value]


async def chat_completions(request: Request) -> Response:
    e = engine(request)
    body = await parse_body(request, ChatCompletionRequest)
    if body.tools:
        raise NotSupported("tools (function calling) are not supported by ff serve yet")
    options = body.options()
    if body.max_completion_tokens is not None:
        options["num_predict"] = body.max_completion_tokens
    req = GenerationRequest(
        messages=[
            ChatMessage(m.role if m.role != "developer" else "system", m.text()) for m in body.messages
        ],
        options=options,
        format=_format(body.response_format),
    )
    gen = Generation(e.scheduler, e.metrics, body.model, req, keep_alive=None, need=Capability.CHAT)
    include = bool(body.stream_options and body.stream_options.include_usage)
    return await _respond(
        request, gen, model=body.model, chat=True, stream=body.stream, include_usage=include
    )


async def completions(request: Request) -> Response:
    e = engine(request)
    body = await parse_body(request, CompletionRequest)
    prompt = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt)
    req = GenerationRequest(prompt=prompt, raw=True, suffix=body.suffix, options=body.options())
    gen = Generation(e.scheduler, e.metrics, body.model, req, keep_alive=None, need=Capability.GENERATE)
    include = bool(body.stream_options and body.stream_options.include_usage)
    return await _respond(
        request, gen, model=body.model, chat=False, stream=body.stream, include_usage=include
    )


async def embeddings(request: Request) -> Response:
    e = engine(request)
    body = await parse_body(request, EmbeddingRequest)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    try:
        result, _ = await embed_texts(request, e, body.model, texts, True, None)
    except ClientGone:
        return GONE
    data = []
    for i, vec in enumerate(result.vectors):
        if body.dimensions:
            vec = vec[: body.dimensions]
        value: object = (
            base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            if body.encoding_format == "base64"
            else vec
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return JSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})


def _model_obj(e: Engine, name: str, digest: str) -> dict[str, object]:
    mtime = e.store.blob_path(digest).stat().st_mtime if e.store.has_blob(digest) else e.started
    return {"id": name, "object": "model", "created": int(mtime), "owned_by": "ferrousforge"}


async def list_models(request: Request) -> Response:
    e = engine(request)
    tags = await asyncio.to_thread(e.store.tags)
    return JSONResponse({"object": "list", "data": [_model_obj(e, n, d.digest) for n, d in tags]})


async def get_model(request: Request) -> Response:
    e = engine(request)
    name = canonical(request.path_params["model"])
    try:
        desc = await asyncio.to_thread(e.store.resolve, name)
    except NotFoundError:
        raise ModelNotFound(f"The model '{name}' does not exist") from None
    return JSONResponse(_model_obj(e, name, desc.digest))


ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
