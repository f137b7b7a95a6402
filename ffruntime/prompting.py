"""Turn a :class:`GenerationRequest` into prompt text the way Ollama does.

Template choice: the request's ``template``, else the artifact's TEMPLATE (Go template syntax), else
the model's own chat template (Jinja, from the GGUF). The system prompt is the request's, else the
artifact's SYSTEM; the artifact's MESSAGEs come before a chat's messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ffruntime.gotemplate import TemplateError, render, uses_messages
from ffruntime.runtime import ChatMessage, GenerationRequest

JinjaRender = Callable[[list[dict[str, str]]], tuple[str, list[str]]]
"""Renders messages with the model's own chat template; returns the prompt and extra stop strings."""


@dataclass(frozen=True)
class ModelPrompting:
    template: str | None  # the artifact's Go template
    system: str | None
    messages: Sequence[ChatMessage]
    jinja: JinjaRender | None


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
    if system and not any(m.role == "system" for m in msgs):
        return [ChatMessage("system", system), *msgs]
    return list(msgs)


def build_prompt(req: GenerationRequest, model: ModelPrompting) -> tuple[str, list[str]]:
    """Return the prompt text and any stop strings the template implies."""
    if req.raw:
        return req.prompt, []
    template = req.template or model.template
    system = req.system if req.system is not None else model.system
    chat = req.messages is not None
    msgs = [*model.messages, *(req.messages or ())] if chat else [ChatMessage("user", req.prompt)]
    try:
        if template is not None:
            if uses_messages(template):
                values: dict[str, object] = {
                    "System": system,
                    "Prompt": req.prompt,
                    "Messages": [{"Role": m.role, "Content": m.content} for m in _with_system(msgs, system)],
                    "Response": "",
                }
                return render(template, values), []  # type: ignore[arg-type]
            return _go_turns(template, system, msgs), []
    except TemplateError as exc:
        raise ValueError(f"cannot render the model's template: {exc}") from None
    if model.jinja is not None:
        return model.jinja([{"role": m.role, "content": m.content} for m in _with_system(msgs, system)])
    parts = [system] if system else []
    parts += [m.content for m in msgs]
    return "\n".join(parts), []
