"""OpenAI's Responses API: ``POST /v1/responses``, whole or as its typed SSE events, as the ``openai``
SDK's ``responses.create`` calls it.

Stateless: nothing is stored (``store`` is accepted and answered as false), so a
``previous_response_id`` is a 400 that says to send the conversation as ``input`` items instead.
``input`` is a text or items (messages, ``function_call`` and ``function_call_output``); function
tools and ``tool_choice`` go through :func:`ffserve.toolcalls.plan` and ``text.format`` through the
typed constraints, as chat completions' do.
"""

from __future__ import annotations

import dataclasses
import json
import time
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
    Constraint,
    Done,
    FreeText,
    GenerationRequest,
    JsonObject,
    Token,
    ToolCall,
)
from ffserve import toolcalls
from ffserve.errors import BadRequest, NotSupported
from ffserve.generation import Generation, respond
from ffserve.state import app_state
from ffserve.streaming import sse_event
from ffserve.wire import parse_body
from ffserve.wire.openai_responses import (
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    NamedFunction,
    ResponsesRequest,
    TextFormat,
)
from ffserve.wire.options import openai_options

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def _text(content: str | list[ContentPart], where: str) -> str:
    if isinstance(content, str):
        return content
    out = []
    for j, p in enumerate(content):
        if p.type in _TEXT_PARTS:
            out.append(p.text)
        elif p.type == "refusal":
            out.append(p.refusal)
        else:
            raise NotSupported(f"{where}.{j}: {p.type} parts are not supported by ff's runtimes")
    return "".join(out)


def _messages(body: ResponsesRequest) -> list[ChatMessage]:
    """``instructions`` and ``input`` as runtime messages; consecutive function calls are one turn."""
    out = [ChatMessage("system", body.instructions)] if body.instructions else []
    if isinstance(body.input, str):
        return [*out, ChatMessage("user", body.input)]
    if not body.input:
        raise BadRequest("input: at least one item is needed")
    names: dict[str, str] = {}
    for i, item in enumerate(body.input):
        where = f"input.{i}"
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            out.append(ChatMessage(role, _text(item.content, where + ".content")))
        elif isinstance(item, FunctionCallItem):
            try:
                args = json.loads(item.arguments) if item.arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise BadRequest(f"{where}.arguments: not JSON: {exc}") from None
            if not isinstance(args, dict):
                raise BadRequest(f"{where}.arguments: must be a JSON object")
            call = ToolCall(item.name, args, item.call_id)
            names[item.call_id] = item.name
            if out and out[-1].role == "assistant" and out[-1].tool_calls:
                out[-1] = dataclasses.replace(out[-1], tool_calls=(*out[-1].tool_calls, call))
            else:
                out.append(ChatMessage("assistant", "", (call,)))
        elif isinstance(item, FunctionCallOutputItem):
            text = _text(item.output, where + ".output")
            out.append(ChatMessage("tool", text, (), names.get(item.call_id), item.call_id))
    return out


def _constraint(fmt: TextFormat | None) -> Constraint:
    if fmt is None or fmt.type == "text":
        return FreeText()
    if fmt.type == "json_schema":
        if not fmt.schema_:
            raise BadRequest("text.format: type json_schema needs a schema")
        return json_schema(fmt.schema_, "text.format.schema")
    return JsonObject()


def _request(body: ResponsesRequest) -> GenerationRequest:
    if body.previous_response_id is not None:
        raise BadRequest(
            "previous_response_id: this server does not store responses (it is stateless); "
            "send the conversation as input items instead"
        )
    choice = body.tool_choice
    name = choice.name if isinstance(choice, NamedFunction) else choice
    tools, forced = toolcalls.plan([t.tool() for t in body.tools] if body.tools else None, name)
    options = openai_options(
        max_tokens=body.max_output_tokens, stop=None, temperature=body.temperature, top_p=body.top_p
    )
    fmt = body.text.format if body.text else None
    return GenerationRequest(
        messages=_messages(body), options=options.params(), tools=tools,
        constraint=forced or _constraint(fmt),
    )


def _hex() -> str:
    return uuid.uuid4().hex[:24]


@dataclass
class _Reply:
    """One response in the Responses API's shapes: whole (:meth:`whole`) or as events (:meth:`events`)."""

    body: ResponsesRequest
    names: list[str]
    rid: str = field(init=False, default_factory=lambda: "resp_" + _hex())
    created: int = field(init=False, default_factory=lambda: int(time.time()))
    seq: int = field(init=False, default=0)
    mid: str | None = field(init=False, default=None)  # the message item's id, once it is opened
    text: str = field(init=False, default="")

    def response(self, status: str, output: list[dict[str, object]], done: Done | None) -> dict[str, object]:
        b = self.body
        fmt = b.text.format if b.text and b.text.format else None
        usage: dict[str, object] = {}
        if done is not None:  # ff keeps no per-request cache counts: the details say 0
            usage["usage"] = {
                "input_tokens": done.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": done.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": done.prompt_tokens + done.completion_tokens,
            }
        incomplete = done is not None and done.reason == "length"
        return {
            "id": self.rid,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": b.instructions,
            "max_output_tokens": b.max_output_tokens,
            "model": b.model,
            "output": output,
            "parallel_tool_calls": b.parallel_tool_calls is not False,
            "previous_response_id": None,
            "store": False,
            "temperature": b.temperature,
            "top_p": b.top_p,
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
            "tool_choice": b.tool_choice.model_dump() if isinstance(b.tool_choice, NamedFunction)
            else (b.tool_choice or "auto"),
            "tools": [t.model_dump() for t in b.tools or ()],
            "truncation": "disabled",
            "metadata": b.metadata or {},
            **usage,  # once known (OpenAI's schema has no null usage)
        }

    @staticmethod
    def _message(mid: str, text: str | None, status: str) -> dict[str, object]:
        parts = [] if text is None else [_Reply._part(text)]
        return {"type": "message", "id": mid, "status": status, "role": "assistant", "content": parts}

    @staticmethod
    def _call(call: ToolCall) -> dict[str, object]:
        return {
            "type": "function_call",
            "id": "fc_" + _hex(),
            "call_id": "call_" + _hex(),
            "name": call.name,
            "arguments": json.dumps(dict(call.arguments), ensure_ascii=False),
            "status": "completed",
        }

    def _output(self, text: str, done: Done) -> list[dict[str, object]]:
        content, calls = toolcalls.parse(text, self.names) if self.names else (text, [])
        out = [self._message("msg_" + _hex(), content, _status(done))] if content or not calls else []
        return out + [self._call(c) for c in calls]

    def whole(self, text: str, done: Done) -> dict[str, object]:
        return self.response(_status(done), self._output(text, done), done)

    def event(self, kind: str, **fields: object) -> bytes:
        self.seq += 1
        return sse_event(kind, {"type": kind, "sequence_number": self.seq - 1, **fields})

    def _delta(self, delta: str) -> Iterator[bytes]:
        """Text for the message item (opened by the first text, or by an answer with nothing in it)."""
        if self.mid is None:
            self.mid = "msg_" + _hex()
            item = self._message(self.mid, None, "in_progress")
            yield self.event("response.output_item.added", output_index=0, item=item)
            yield self.event("response.content_part.added", **self._where(), part=self._part(""))
        if delta:
            self.text += delta
            yield self.event("response.output_text.delta", **self._where(), delta=delta, logprobs=[])

    def _where(self) -> dict[str, object]:
        return {"item_id": self.mid, "output_index": 0, "content_index": 0}

    @staticmethod
    def _part(text: str) -> dict[str, object]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _end(self, done: Done, calls: list[dict[str, object]]) -> Iterator[bytes]:
        """The closing events: the text item's, then each function call's, then the response's."""
        output: list[dict[str, object]] = []
        if self.mid is not None:
            yield self.event("response.output_text.done", **self._where(), text=self.text, logprobs=[])
            yield self.event("response.content_part.done", **self._where(), part=self._part(self.text))
            item = self._message(self.mid, self.text, _status(done))
            output.append(item)
            yield self.event("response.output_item.done", output_index=0, item=item)
        for item in calls:
            i = len(output)
            added = {**item, "arguments": "", "status": "in_progress"}
            yield self.event("response.output_item.added", output_index=i, item=added)
            where = {"item_id": item["id"], "output_index": i}
            yield self.event("response.function_call_arguments.delta", **where, delta=item["arguments"])
            args = {"name": item["name"], "arguments": item["arguments"]}
            yield self.event("response.function_call_arguments.done", **where, **args)
            output.append(item)
            yield self.event("response.output_item.done", output_index=i, item=item)
        status = _status(done)
        yield self.event(f"response.{status}", response=self.response(status, output, done))

    async def events(self, gen: Generation) -> AsyncIterator[bytes]:
        yield self.event("response.created", response=self.response("in_progress", [], None))
        yield self.event("response.in_progress", response=self.response("in_progress", [], None))
        parser = toolcalls.StreamParser(self.names) if self.names else None
        try:
            async for ev in gen:
                if isinstance(ev, Token):
                    delta = parser.feed(ev.text) if parser else ev.text
                    for chunk in self._delta(delta) if delta else ():
                        yield chunk
                    continue
                rest, calls = parser.finish() if parser else ("", [])
                for chunk in self._delta(rest) if rest or not calls else ():
                    yield chunk
                for chunk in self._end(ev, [self._call(c) for c in calls]):
                    yield chunk
        except Exception as exc:  # headers are sent: report in the stream
            yield self.event("error", code="server_error", message=str(exc), param=None)


def _status(done: Done) -> str:
    return "incomplete" if done.reason == "length" else "completed"


async def responses(request: Request) -> Response:
    e = app_state(request)
    body = await parse_body(request, ResponsesRequest)
    req = _request(body)
    gen = Generation(e.scheduler, e.metrics, body.model, req, keep_alive=None, need=Capability.CHAT)
    reply = _Reply(body, toolcalls.tool_names(req.tools))
    return await respond(request, gen, body.stream, lambda a: reply.whole(a.text, a.done), reply.events)


ROUTES = [Route("/v1/responses", responses, methods=["POST"])]
