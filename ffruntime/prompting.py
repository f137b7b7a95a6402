"""Turn a :class:`GenerationRequest` into prompt text the way Ollama does.

The one chat-template renderer: the llama.cpp and ONNX Runtime GenAI runtimes (so ``ff serve`` and
``ff run``) and the verify stage all build prompts here, so verify measures what is served.

Template choice: the request's ``template``, else the artifact's TEMPLATE (Go template syntax), else
the model's own chat template (Jinja: the GGUF's ``tokenizer.chat_template``, a GenAI folder's
``chat_template.jinja``), rendered in the environment Hugging Face's transformers gives chat templates
(sandboxed, ``trim_blocks``/``lstrip_blocks``, loop controls, ``{% generation %}``, ``tojson``,
``raise_exception``, ``strftime_now``). The system prompt is the request's, else the artifact's SYSTEM;
the artifact's MESSAGEs come before a chat's messages.

Tools: a template that knows about tools gets them as its own variable (Jinja ``tools``; Go ``.Tools``,
with ``.ToolCalls`` on assistant messages and ``.ToolName`` on tool results) and renders them its way.
A template without tool support (SmolLM2's ChatML one, most Go TEMPLATEs) gets the documented
fallback: the tool specs and the calling convention are appended to the system prompt, an assistant's
earlier calls are written back as ``<tool_call>{json}</tool_call>`` and tool results are passed as
user turns wrapped in ``<tool_response>`` tags.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ffruntime.gotemplate import Struct, TemplateError, render, uses_messages, uses_tools
from ffruntime.runtime import ChatMessage, GenerationRequest, ToolCall

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


class ChatTemplateError(ValueError):
    """The model's template cannot render these messages (it does not parse, or it refused them)."""


@dataclass(frozen=True)
class ModelfilePrompt:
    """What an artifact (or the Modelfile being built) says about prompts: TEMPLATE, SYSTEM, MESSAGEs."""

    template: str | None = None  # Go template syntax
    system: str | None = None
    messages: tuple[ChatMessage, ...] = ()

    @classmethod
    def of(
        cls, template: str | None, system: str | None, messages: Iterable[Mapping[str, object]]
    ) -> ModelfilePrompt:
        """From the artifact's layers (messages as ``{"role": …, "content": …}``)."""
        msgs = tuple(ChatMessage(str(m.get("role", "")), str(m.get("content", ""))) for m in messages)
        return cls(template, system, msgs)


@dataclass(frozen=True)
class ModelPrompting:
    template: str | None  # the artifact's Go template
    system: str | None
    messages: Sequence[ChatMessage]
    chat_template: str | None = None  # the model's own Jinja chat template
    bos_token: str = ""
    eos_token: str = ""

    @property
    def chats(self) -> bool:
        """Whether the model has a template for chats (its own or the artifact's)."""
        return bool(self.template or self.chat_template)


def model_prompting(
    modelfile: ModelfilePrompt, chat_template: str | None, bos_token: str = "", eos_token: str = ""
) -> ModelPrompting:
    """How a model's prompts are built: the artifact's TEMPLATE, SYSTEM and MESSAGEs with the model's
    own chat template (used when there is no TEMPLATE) and the text of its special tokens."""
    return ModelPrompting(
        template=modelfile.template,
        system=modelfile.system,
        messages=modelfile.messages,
        chat_template=chat_template or None,
        bos_token=bos_token,
        eos_token=eos_token,
    )


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
    raise jinja2.TemplateError(message)


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' ``tojson``: plain JSON (Jinja's own escapes HTML characters)."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now(UTC).strftime(fmt)


class _GenerationBlock(Extension):
    """``{% generation %}…{% endgeneration %}``: transformers marks assistant text with it (to build
    training masks); rendering a prompt, the block is its body."""

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment)
        self.tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationBlock]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=32)
def _compiled(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template does not parse: {exc}") from None


def render_jinja(model: ModelPrompting, msgs: Sequence[ChatMessage], tools: Tools | None) -> str:
    """The model's own chat template with ``tools``, as Hugging Face renders it."""
    if model.chat_template is None:
        raise ChatTemplateError("the model has no chat template")
    compiled = _compiled(model.chat_template)
    try:
        return compiled.render(
            messages=[_jinja_message(m) for m in msgs],
            tools=list(tools) if tools else None,
            bos_token=model.bos_token,
            eos_token=model.eos_token,
            add_generation_prompt=True,
        )
    except (jinja2.TemplateError, TypeError, ValueError) as exc:
        raise ChatTemplateError(str(exc)) from None


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
    except (TemplateError, ChatTemplateError) as exc:
        raise ChatTemplateError(f"cannot render the model's template: {exc}") from None
    system, msgs = _fallback(system, msgs, tools)
    parts = [system] if system else []
    parts += [m.content for m in msgs]
    return "\n".join(parts), []


def question_prompt(model: ModelPrompting, question: str) -> tuple[str, list[str]]:
    """The prompt ``ff serve`` builds for one question: a chat turn (``/api/chat``) for a model with a
    template, else the question as ``/api/generate``'s prompt (as ``ff run`` sends it)."""
    if model.chats:
        return build_prompt(GenerationRequest(messages=[ChatMessage("user", question)]), model)
    return build_prompt(GenerationRequest(prompt=question), model)
