"""Anthropic's Messages API: ``POST /v1/messages`` (whole or as named SSE events) and
``POST /v1/messages/count_tokens``, as the ``anthropic`` SDK calls them.

Messages map onto the same runtime messages as OpenAI's: ``system`` (a string or text blocks) is the
system message, ``tool_use`` blocks are an assistant's tool calls and ``tool_result`` blocks the tool
messages that answer them; tools and ``tool_choice`` (``auto``, ``any``, ``tool``, ``none``) go through
:func:`ffserve.toolcalls.plan` like OpenAI's, and ``output_config.format`` (structured outputs) through
the typed JSON-schema constraint. ``temperature``, ``top_p`` and ``top_k`` are read when sent (current
SDKs send them only as ``extra_body``). Errors are in Anthropic's shape (:mod:`ffserve.errors`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ffruntime.constraints import json_schema
from ffruntime.runtime import (
    Capability,
    ChatMessage,
    Done,
    FreeText,
    GenerationRequest,
    ParamValue,
    Token,
    ToolCall,
)
from ffserve import toolcalls
from ffserve.encoding import JSONResponse
from ffserve.errors import BadRequest, NotSupported
from ffserve.generation import GONE, ClientGone, Generation, respond, run_to_end
from ffserve.state import app_state
from ffserve.streaming import sse_event
from ffserve.wire import parse_body
from ffserve.wire.anthropic import (
    CountTokensRequest,
    ImageBlock,
    MessagesRequest,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from ffserve.wire.options import openai_options

_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


def _tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


def _messages(body: MessagesRequest | CountTokensRequest) -> list[ChatMessage]:
    """The conversation as runtime messages; a user message's tool results come before its text."""
    out = [ChatMessage("system", system)] if (system := body.system_text()) else []
    names: dict[str, str] = {}
    for i, m in enumerate(body.messages):
        if isinstance(m.content, str):
            out.append(ChatMessage(m.role, m.content))
            continue
        if not m.content:
            raise BadRequest(f"messages.{i}.content: a message needs at least one content block")
        texts: list[str] = []
        calls: list[ToolCall] = []
        for j, b in enumerate(m.content):
            where = f"messages.{i}.content.{j}"
            if isinstance(b, TextBlock):
                texts.append(b.text)
            elif isinstance(b, ImageBlock):
                raise NotSupported(f"{where}: {b.type} blocks are not supported by ff's runtimes")
            elif isinstance(b, ToolUseBlock):
                if m.role != "assistant":
                    raise BadRequest(f"{where}: tool_use blocks belong to assistant messages")
                calls.append(ToolCall(b.name, b.input, b.id))
                names[b.id] = b.name
            elif isinstance(b, ToolResultBlock):
                if m.role != "user":
                    raise BadRequest(f"{where}: tool_result blocks belong to user messages")
                out.append(ChatMessage("tool", b.text(), (), names.get(b.tool_use_id), b.tool_use_id))
        if texts or calls:
            out.append(ChatMessage(m.role, "".join(texts), tuple(calls)))
    return out


def _request(body: MessagesRequest | CountTokensRequest, options: dict[str, ParamValue]) -> GenerationRequest:
    choice = body.tool_choice
    name: str | None = None
    if choice is not None:
        if choice.type == "tool" and not choice.name:
            raise BadRequest("tool_choice: type 'tool' needs the tool's name")
        name = choice.name if choice.type == "tool" else _CHOICE[choice.type]
    tools, forced = toolcalls.plan([t.tool() for t in body.tools] if body.tools else None, name)
    fmt = body.output_config.format if body.output_config else None
    constraint = json_schema(fmt.schema_, "output_config.format.schema") if fmt else FreeText()
    return GenerationRequest(
        messages=_messages(body), tools=tools, options=options, constraint=forced or constraint
    )


@dataclass
class _Reply:
    """One message's answer in Anthropic's shapes: whole (:meth:`whole`) or as events (:meth:`events`)."""

    model: str
    names: list[str]
    stops: list[str]
    mid: str = field(init=False, default_factory=lambda: "msg_" + uuid.uuid4().hex[:24])

    def _stop(self, done: Done, calls: list[ToolCall]) -> dict[str, object]:
        if calls:
            return {"stop_reason": "tool_use", "stop_sequence": None}
        if done.reason == "length":
            return {"stop_reason": "max_tokens", "stop_sequence": None}
        if done.stop_sequence is not None and done.stop_sequence in self.stops:
            return {"stop_reason": "stop_sequence", "stop_sequence": done.stop_sequence}
        return {"stop_reason": "end_turn", "stop_sequence": None}

    @staticmethod
    def _tool_block(call: ToolCall) -> dict[str, object]:
        return {"type": "tool_use", "id": _tool_id(), "name": call.name, "input": dict(call.arguments)}

    def _message(self, content: list[dict[str, object]], usage: dict[str, int]) -> dict[str, object]:
        return {
            "id": self.mid,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }

    def whole(self, text: str, done: Done) -> dict[str, object]:
        content, calls = toolcalls.parse(text, self.names) if self.names else (text, [])
        blocks: list[dict[str, object]] = [{"type": "text", "text": content}] if content or not calls else []
        blocks += [self._tool_block(c) for c in calls]
        usage = {"input_tokens": done.prompt_tokens, "output_tokens": done.completion_tokens}
        return {**self._message(blocks, usage), **self._stop(done, calls)}

    def _end(self, done: Done, parser: toolcalls.StreamParser | None, index: int) -> Iterator[bytes]:
        """The events after the last token: held text, tool calls, the stop reason and usage."""
        calls: list[ToolCall] = []
        if parser is not None:
            content, calls = parser.finish()
            if content:
                yield from self._text(content, index)
        if index >= 0:  # the open text block
            yield sse_event("content_block_stop", {"type": "content_block_stop", "index": index})
        for call in calls:
            index += 1
            block = self._tool_block(call)
            partial = json.dumps(block["input"], ensure_ascii=False)
            yield sse_event("content_block_start", {
                "type": "content_block_start", "index": index, "content_block": {**block, "input": {}}
            })
            yield sse_event("content_block_delta", {
                "type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": partial},
            })
            yield sse_event("content_block_stop", {"type": "content_block_stop", "index": index})
        usage = {"input_tokens": done.prompt_tokens, "output_tokens": done.completion_tokens}
        delta = {"type": "message_delta", "delta": self._stop(done, calls), "usage": usage}
        yield sse_event("message_delta", delta)
        yield sse_event("message_stop", {"type": "message_stop"})

    @staticmethod
    def _text(text: str, index: int) -> Iterator[bytes]:
        if index < 0:
            yield sse_event("content_block_start", {
                "type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}
            })
        delta = {"type": "text_delta", "text": text}
        yield sse_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})

    async def events(self, gen: Generation) -> AsyncIterator[bytes]:
        parser = toolcalls.StreamParser(self.names) if self.names else None
        start = self._message([], {"input_tokens": 0, "output_tokens": 0})
        yield sse_event("message_start", {"type": "message_start", "message": start})
        yield sse_event("ping", {"type": "ping"})
        index = -1  # the text block, once opened: 0
        try:
            async for ev in gen:
                if not isinstance(ev, Token):
                    for chunk in self._end(ev, parser, index):
                        yield chunk
                    return
                text = parser.feed(ev.text) if parser else ev.text
                if text:
                    for chunk in self._text(text, index):
                        yield chunk
                    index = 0
        except Exception as exc:  # headers are sent: report in the stream
            error = {"type": "error", "error": {"type": "api_error", "message": str(exc)}}
            yield sse_event("error", error)


async def messages(request: Request) -> Response:
    e = app_state(request)
    body = await parse_body(request, MessagesRequest)
    options = openai_options(
        max_tokens=body.max_tokens,
        stop=body.stop_sequences,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
    ).params()
    req = _request(body, options)
    gen = Generation(e.scheduler, e.metrics, body.model, req, keep_alive=None, need=Capability.CHAT)
    reply = _Reply(body.model, toolcalls.tool_names(req.tools), list(body.stop_sequences or ()))
    return await respond(request, gen, body.stream, lambda a: reply.whole(a.text, a.done), reply.events)


async def count_tokens(request: Request) -> Response:
    """The prompt's tokens as the model's template and tokenizer make them: the prompt is evaluated
    with ``num_predict`` 0 (which also warms the prefix cache for the request that follows)."""
    e = app_state(request)
    body = await parse_body(request, CountTokensRequest)
    req = _request(body, {"num_predict": 0})
    req.constraint = FreeText()  # nothing is sampled
    gen = Generation(e.scheduler, e.metrics, body.model, req, keep_alive=None, need=Capability.CHAT)
    try:
        answer = await run_to_end(request, gen)
    except ClientGone:
        return GONE
    return JSONResponse({"input_tokens": answer.done.prompt_tokens})


ROUTES = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
