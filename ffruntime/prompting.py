"""Turn a :class:`GenerationRequest` into prompt text the way Ollama does.

Template choice: the request's ``template``, else the artifact's TEMPLATE (Go template syntax), else
the model's own chat template (Jinja, from the GGUF). The system prompt is the request's, else the
artifact's SYSTEM; the artifact's MESSAGEs come before a chat's messages.

Tools: a template that knows about tools gets them as its own variable (Jinja ``tools``; Go ``.Tools``,
with ``.ToolCalls`` on assistant messages and ``.ToolName`` on tool results) and renders them its way.
A template without tool support (SmolLM2's ChatML one, most Go TEMPLATEs) gets the documented
fallback: the tool specs and the calling convention are appended to the system prompt, an assistant's
earlier calls are written back as ``<tool_call>{json}</tool_call>`` and tool results are passed as
user turns wrapped in ``<tool_response>`` tags.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ffruntime.gotemplate import Struct, TemplateError, render, uses_messages, uses_tools
from ffruntime.runtime import ChatMessage, GenerationRequest, ToolCall

JinjaRender = Callable[[list[dict[str, str]]], tuple[str, list[str]]]
"""Renders messages with the model's own chat template; returns the prompt and extra stop strings."""
Tools = Sequence[Mapping[str, object]]

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
FALLBACK_TOOLS_PROMPT = (
    "You can call the following tools (functions), given as JSON specifications:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call a tool, answer with nothing but one JSON object inside tags, for example:\n"
    + TOOL_CALL_OPEN
    + '{{"name": "tool_name", "arguments": {{"argument": "value"}}}}'
    + TOOL_CALL_CLOSE
    + "\nWhen a tool result is given, use it to answer the user. Otherwise answer normally."
)


@dataclass(frozen=True)
class ModelPrompting:
    template: str | None  # the artifact's Go template
    system: str | None
    messages: Sequence[ChatMessage]
    jinja: JinjaRender | None = None  # a renderer of the chat template without tool support
    chat_template: str | None = None  # the GGUF's ``tokenizer.chat_template`` (rendered here, with tools)
    bos_token: str = ""
    eos_token: str = ""


def _call_json(call: ToolCall) -> str:
    return json.dumps({"name": call.name, "arguments": dict(call.arguments)}, ensure_ascii=False)


def _fallback(
    system: str | None, msgs: Sequence[ChatMessage], tools: Tools | None
) -> tuple[str | None, list[ChatMessage]]:
    """The system prompt and messages for a template without tool support (see the module docstring)."""
    out: list[ChatMessage] = []
    for m in msgs:
        if m.role == "assistant" and m.tool_calls:
            calls = "\n".join(TOOL_CALL_OPEN + _call_json(c) + TOOL_CALL_CLOSE for c in m.tool_calls)
            out.append(ChatMessage("assistant", (m.content + "\n" + calls).strip()))
        elif m.role == "tool":
            name = f' name="{m.tool_name}"' if m.tool_name else ""
            out.append(ChatMessage("user", f"<tool_response{name}>\n{m.content}\n</tool_response>"))
        else:
            out.append(m)
    if not tools:
        return system, out
    block = FALLBACK_TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    own = next((i for i, m in enumerate(out) if m.role == "system"), None)
    if own is not None:
        out[own] = ChatMessage("system", f"{out[own].content}\n\n{block}".lstrip())
        return system, out
    return (f"{system}\n\n{block}" if system else block), out


def _go_turns(template: str, system: str | None, msgs: Sequence[ChatMessage]) -> str:
    """Ollama's rendering of a template without ``.Messages``: one render per user turn."""
    out: list[str] = []
    sys_text = system
    pending: str | None = None
    for m in msgs:
        if m.role == "system":
            sys_text = m.content
        elif m.role == "user":
            if pending is not None:
                out.append(render(template, {"System": sys_text, "Prompt": pending, "Response": ""}))
                sys_text = None
            pending = m.content
        elif m.role == "assistant":
            out.append(render(template, {"System": sys_text, "Prompt": pending or "", "Response": m.content}))
            sys_text, pending = None, None
    if pending is not None or not out:
        out.append(render(template, {"System": sys_text, "Prompt": pending or "", "Response": ""}))
    return "".join(out)


def _with_system(msgs: Sequence[ChatMessage], system: str | None) -> list[ChatMessage]:
    """``system`` as the first message, unless the chat has its own."""
    if not system:
        return list(msgs)
    if not any(m.role == "system" for m in msgs):
        return [ChatMessage("system", system), *msgs]
    return list(msgs)


def _go_message(m: ChatMessage) -> dict[str, object]:
    calls = [
        Struct(
            {"ID": c.id, "Function": Struct({"Name": c.name, "Arguments": dict(c.arguments)}, fn)},
            {"id": c.id, "function": fn},
        )
        for c in m.tool_calls
        for fn in [{"name": c.name, "arguments": dict(c.arguments)}]
    ]
    return {
        "Role": m.role,
        "Content": m.content,
        "ToolCalls": calls or None,
        "ToolName": m.tool_name or "",
        "ToolCallID": m.tool_call_id or "",
    }


def _go_tool(t: Mapping[str, object]) -> Struct:
    fn = t.get("function")
    fn = fn if isinstance(fn, Mapping) else {}
    function = {
        "Name": fn.get("name", ""),
        "Description": fn.get("description", ""),
        "Parameters": fn.get("parameters", {}),
    }
    return Struct({"Type": t.get("type", "function"), "Function": Struct(function, dict(fn))}, dict(t))


def _jinja_message(m: ChatMessage) -> dict[str, object]:
    out: dict[str, object] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": dict(c.arguments)}}
            for c in m.tool_calls
        ]
    if m.role == "tool":
        out["name"] = m.tool_name or ""
        out["tool_call_id"] = m.tool_call_id or ""
    return out


def _raise(message: str) -> None:
    raise TemplateError(message)


def render_jinja(model: ModelPrompting, msgs: Sequence[ChatMessage], tools: Tools | None) -> str:
    """The model's own chat template (Jinja, sandboxed) with ``tools``, as Hugging Face renders it."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    assert model.chat_template is not None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda v, indent=None, **_: json.dumps(v, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now(UTC).strftime(fmt)
    try:
        return env.from_string(model.chat_template).render(
            messages=[_jinja_message(m) for m in msgs],
            tools=list(tools) if tools else None,
            bos_token=model.bos_token,
            eos_token=model.eos_token,
            add_generation_prompt=True,
        )
    except (jinja2.TemplateError, TemplateError, TypeError, ValueError) as exc:
        raise TemplateError(str(exc)) from None


def build_prompt(req: GenerationRequest, model: ModelPrompting) -> tuple[str, list[str]]:
    """Return the prompt text and any stop strings the template implies."""
    if req.raw:
        return req.prompt, []
    template = req.template or model.template
    system = req.system if req.system is not None else model.system
    chat = req.messages is not None
    msgs = [*model.messages, *(req.messages or ())] if chat else [ChatMessage("user", req.prompt)]
    tools = req.tools or None
    try:
        if template is not None:
            native = uses_tools(template)
            if not native:
                system, msgs = _fallback(system, msgs, tools)
            if uses_messages(template):
                values: dict[str, object] = {
                    "System": system,
                    "Prompt": req.prompt,
                    "Messages": [_go_message(m) for m in _with_system(msgs, system)],
                    "Tools": [_go_tool(t) for t in tools] if native and tools else None,
                    "Response": "",
                }
                return render(template, values), []
            return _go_turns(template, system, msgs), []
        if model.chat_template is not None:
            native = "tools" in model.chat_template
            if not native:
                system, msgs = _fallback(system, msgs, tools)
            stops = [model.eos_token] if model.eos_token else []
            return render_jinja(model, _with_system(msgs, system), tools if native else None), stops
    except TemplateError as exc:
        raise ValueError(f"cannot render the model's template: {exc}") from None
    system, msgs = _fallback(system, msgs, tools)
    if model.jinja is not None:
        plain = [{"role": m.role, "content": m.content} for m in _with_system(msgs, system)]
        return model.jinja(plain)
    parts = [system] if system else []
    parts += [m.content for m in msgs]
    return "\n".join(parts), []
