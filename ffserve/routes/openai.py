"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models (SSE)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ffruntime.constraints import json_schema
from ffruntime.runtime import (
    Capability,
    ChatMessage,
    Constraint,
    Done,
    EmbedInput,
    FreeText,
    GenerationRequest,
    JsonObject,
    Media,
    Token,
    TokenLogprob,
    ToolCall,
)
from ffserve import logprobs, toolcalls
from ffserve.encoding import JSONResponse
from ffserve.errors import BadRequest, mapped_error
from ffserve.generation import GONE, Answer, ClientGone, Generation, respond
from ffserve.models import canonical
from ffserve.routes.ollama import embed_texts
from ffserve.settings import Settings
from ffserve.state import AppState, app_state
from ffserve.streaming import SSE_DONE, sse
from ffserve.wire import media, parse_body
from ffserve.wire.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageURL,
    NamedToolChoice,
    ResponseFormat,
)
from ffserve.wire.openai import ChatMessage as OpenAIMessage
from registry.store import NotFoundError

FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


def _constraint(rf: ResponseFormat | None) -> Constraint:
    """``response_format``: ``text``, ``json_object``, ``json_schema`` (any JSON object without a schema)."""
    if rf is None or rf.type == "text":
        return FreeText()
    if rf.type == "json_schema" and rf.json_schema and rf.json_schema.schema_:
        return json_schema(rf.json_schema.schema_, "response_format.json_schema.schema")
    return JsonObject()


def _usage(done: Done) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _wire_calls(calls: list[ToolCall]) -> list[dict[str, object]]:
    return [
        {
            "index": i,
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(dict(c.arguments), ensure_ascii=False)},
        }
        for i, c in enumerate(calls)
    ]


@dataclass
class _Reply:
    """One completion's answer in OpenAI's shapes: whole (:meth:`whole`) or as SSE chunks (:meth:`chunks`)."""

    chat: bool
    model: str
    want_logprobs: bool
    include_usage: bool
    names: list[str]
    rid: str = field(init=False)
    created: int = field(init=False, default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.rid = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]

    def lp(self, tokens: Sequence[TokenLogprob], offset: int = 0) -> dict[str, object] | None:
        if not self.want_logprobs:
            return None
        return logprobs.chat(tokens) if self.chat else logprobs.completion(tokens, offset)

    def whole(self, answer: Answer) -> dict[str, object]:
        if not self.chat:
            choice: dict[str, object] = {
                "index": 0,
                "text": answer.text,
                "logprobs": self.lp(answer.logprobs),
                "finish_reason": FINISH[answer.done.reason],
            }
        else:
            content, calls = toolcalls.parse(answer.text, self.names) if self.names else (answer.text, [])
            message: dict[str, object] = {
                "role": "assistant", "content": content or (None if calls else ""), "refusal": None
            }
            if calls:
                wire = _wire_calls(calls)
                message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in wire]
            choice = {
                "index": 0,
                "message": message,
                "logprobs": self.lp(answer.logprobs),
                "finish_reason": _finish_reason(answer.done, calls),
            }
        obj = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.rid,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": _usage(answer.done),
        }

    def frame(self, choices: list[dict[str, object]], usage: dict[str, int] | None = None) -> bytes:
        body: dict[str, object] = {
            "id": self.rid,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = usage
        return sse(body)

    def delta(
        self, d: dict[str, object], finish: str | None = None, lps: Sequence[TokenLogprob] = ()
    ) -> bytes:
        choice = {"index": 0, "delta": d, "logprobs": self.lp(lps) if lps else None, "finish_reason": finish}
        return self.frame([choice])

    def _end(self, done: Done, parser: toolcalls.StreamParser | None) -> Iterator[bytes]:
        calls: list[ToolCall] = []
        if parser is not None:
            content, calls = parser.finish()
            if content:
                yield self.delta({"content": content})
            if calls:
                yield self.delta({"tool_calls": _wire_calls(calls)})
        if self.chat:
            yield self.delta({}, _finish_reason(done, calls))
        else:
            end = {"index": 0, "text": "", "logprobs": None, "finish_reason": FINISH[done.reason]}
            yield self.frame([end])
        if self.include_usage:
            yield self.frame([], _usage(done))

    async def chunks(self, gen: Generation) -> AsyncIterator[bytes]:
        parser = toolcalls.StreamParser(self.names) if self.names and self.chat else None
        offset = 0
        try:
            if self.chat:
                yield self.delta({"role": "assistant", "content": ""})
            async for ev in gen:
                if not isinstance(ev, Token):
                    for chunk in self._end(ev, parser):
                        yield chunk
                elif not self.chat:
                    lps = self.lp(ev.logprobs, offset)
                    yield self.frame([{"index": 0, "text": ev.text, "logprobs": lps, "finish_reason": None}])
                    offset += len(ev.text)
                else:
                    content = parser.feed(ev.text) if parser else ev.text
                    if content or (self.want_logprobs and ev.logprobs):
                        yield self.delta({"content": content}, None, ev.logprobs)
        except Exception as exc:  # headers are sent: report in the stream
            yield sse({"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
        yield SSE_DONE


def _finish_reason(done: Done, calls: list[ToolCall]) -> str:
    return "tool_calls" if calls else FINISH[done.reason]


async def _respond(
    request: Request, gen: Generation, *, model: str, chat: bool, stream: bool, include_usage: bool
) -> Response:
    names = toolcalls.tool_names(gen.request.tools)
    reply = _Reply(chat, model, gen.request.logprobs, include_usage, names)
    return await respond(request, gen, stream, reply.whole, reply.chunks)


def _messages(body: ChatCompletionRequest, settings: Settings) -> list[ChatMessage]:
    """OpenAI messages as runtime messages: ``developer`` is ``system``; a tool result is named by the
    call it answers."""
    names: dict[str, str] = {}
    out: list[ChatMessage] = []
    for i, m in enumerate(body.messages):
        calls: list[ToolCall] = []
        for c in m.tool_calls or ():
            try:
                args = json.loads(c.function.arguments) if c.function.arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise BadRequest(f"messages.{i}.tool_calls: arguments are not JSON: {exc}") from None
            if not isinstance(args, dict):
                raise BadRequest(f"messages.{i}.tool_calls: arguments must be a JSON object")
            calls.append(ToolCall(c.function.name, args, c.id))
            names[c.id] = c.function.name
        role = {"developer": "system", "function": "tool"}.get(m.role, m.role)
        tool_name = (names.get(m.tool_call_id or "") or m.name) if role == "tool" else None
        media = _media(m, f"messages.{i}", settings)
        out.append(ChatMessage(role, m.text(), tuple(calls), tool_name, m.tool_call_id, media=media))
    return out


def _media(m: OpenAIMessage, where: str, settings: Settings) -> tuple[Media, ...]:
    """The message's image_url and input_audio parts, in order (their text goes before the text parts)."""
    if not isinstance(m.content, list):
        return ()
    out: list[Media] = []
    for j, p in enumerate(m.content):
        at = f"{where}.content.{j}"
        if p.type == "image_url":
            url = p.image_url.url if isinstance(p.image_url, ImageURL) else p.image_url
            if not url:
                raise BadRequest(f"{at}: an image_url part needs image_url.url")
            out.append(media.image_url(url, f"{at}.image_url", allow_remote=settings.allow_remote_images,
                                       max_bytes=settings.max_body_bytes))
        elif p.type == "input_audio":
            if p.input_audio is None:
                raise BadRequest(f"{at}: an input_audio part needs input_audio.data and .format")
            out.append(media.input_audio(p.input_audio.data, p.input_audio.format, f"{at}.input_audio"))
        elif p.type != "text":
            raise BadRequest(f"{at}: content part type {p.type!r} is not taken here "
                             "(text, image_url, input_audio)")
    return tuple(out)


async def chat_completions(request: Request) -> Response:
    e = app_state(request)
    body = await parse_body(request, ChatCompletionRequest)
    choice = body.tool_choice
    tools, forced = toolcalls.plan(
        body.tools, choice.function.name if isinstance(choice, NamedToolChoice) else choice
    )
    req = GenerationRequest(
        messages=_messages(body, e.settings),
        options=body.options(body.max_completion_tokens).params(),
        constraint=forced or _constraint(body.response_format),
        tools=tools,
        logprobs=bool(body.logprobs),
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else 0,
    )
    gen = Generation(e.scheduler, e.metrics, body.model, req, keep_alive=None, need=Capability.CHAT)
    include = bool(body.stream_options and body.stream_options.include_usage)
    return await _respond(
        request, gen, model=body.model, chat=True, stream=body.stream, include_usage=include
    )


def _inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[EmbedInput]:
    """A string, strings, token ids, or lists of token ids: one input each."""
    if isinstance(value, str):
        return [value]
    out: list[EmbedInput] = []
    ids: list[int] = []
    for x in value:
        if isinstance(x, int):
            ids.append(x)
        else:
            out.append(x)
    if ids and out:
        raise BadRequest("input: a list holds either texts, token ids or lists of token ids, not a mix")
    return [ids] if ids else out


def _prompt(body: CompletionRequest) -> tuple[str, list[int]]:
    inputs = _inputs(body.prompt)
    if all(isinstance(x, str) for x in inputs):
        return "".join(x for x in inputs if isinstance(x, str)), []
    if len(inputs) == 1 and not isinstance(inputs[0], str):
        return "", list(inputs[0])
    raise BadRequest("prompt: one prompt per request (n=1): a string, a list of strings or of token ids")


async def completions(request: Request) -> Response:
    e = app_state(request)
    body = await parse_body(request, CompletionRequest)
    prompt, ids = _prompt(body)
    req = GenerationRequest(
        prompt=prompt,
        raw=True,
        suffix=body.suffix,
        context=ids,
        options=body.options().params(),
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
    )
    gen = Generation(e.scheduler, e.metrics, body.model, req, keep_alive=None, need=Capability.GENERATE)
    include = bool(body.stream_options and body.stream_options.include_usage)
    return await _respond(
        request, gen, model=body.model, chat=False, stream=body.stream, include_usage=include
    )


async def embeddings(request: Request) -> Response:
    e = app_state(request)
    body = await parse_body(request, EmbeddingRequest)
    texts = _inputs(body.input)
    if not texts:
        raise BadRequest("input: at least one input is needed")
    try:
        result, _ = await embed_texts(request, e, body.model, texts, True, None, body.dimensions)
    except ClientGone:
        return GONE
    data = []
    for i, vec in enumerate(result.vectors):
        value: object = (
            base64.b64encode(vec.astype("<f4").tobytes()).decode()
            if body.encoding_format == "base64"
            else vec
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return JSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})


def _model_obj(e: AppState, name: str, digest: str) -> dict[str, object]:
    mtime = e.store.blob_path(digest).stat().st_mtime if e.store.has_blob(digest) else e.started
    return {"id": name, "object": "model", "created": int(mtime), "owned_by": "ferrousforge"}


async def list_models(request: Request) -> Response:
    e = app_state(request)
    tags = await asyncio.to_thread(e.store.tags)
    return JSONResponse({"object": "list", "data": [_model_obj(e, n, d.digest) for n, d in tags]})


async def get_model(request: Request) -> Response:
    e = app_state(request)
    name = canonical(request.path_params["model"])
    try:
        desc = await asyncio.to_thread(e.store.resolve, name)
    except NotFoundError as exc:
        raise mapped_error(exc, f"The model '{name}' does not exist") from None
    return JSONResponse(_model_obj(e, name, desc.digest))


ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
