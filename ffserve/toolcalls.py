"""Tool calls read back from a model's text, whole or as it streams.

Recognised forms: ``<tool_call>{json}</tool_call>`` blocks (Hermes/Qwen style, and the fallback prompt
of :mod:`ffruntime.prompting`), and an answer that is nothing but a JSON object ``{"name": …,
"arguments": {…}}`` (or a list of them, or inside a ``json`` code fence), which is what a forced
tool call's constraint produces. ``arguments`` may also be called ``parameters`` or be JSON text. Only a
call to one of the offered tools counts; anything else stays content.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping

from ffruntime.constraints import forced_tool_call
from ffruntime.prompting import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from ffruntime.runtime import ForcedToolCall, ToolCall
from ffserve.errors import BadRequest
from ffserve.wire.tools import Tool

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.DOTALL)


def new_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _calls(value: object, names: frozenset[str]) -> list[ToolCall] | None:
    items = value if isinstance(value, list) else [value]
    out: list[ToolCall] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        inner = item.get("function")
        fn: dict[str, object] = inner if isinstance(inner, dict) else item
        name = fn.get("name")
        args = fn.get("arguments", fn.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                return None
        if not isinstance(name, str) or name not in names or not isinstance(args, dict):
            return None
        out.append(ToolCall(name, args, new_id()))
    return out or None


def _json(text: str) -> object:
    fenced = _FENCE.match(text)
    try:
        return json.loads(fenced.group(1) if fenced else text)
    except (json.JSONDecodeError, RecursionError):
        return None


def parse(text: str, names: Iterable[str]) -> tuple[str, list[ToolCall]]:
    """Split a complete answer into (content, tool calls); no calls found: (text, [])."""
    allowed = frozenset(names)
    if TOOL_CALL_OPEN in text:
        calls: list[ToolCall] = []
        for block in _BLOCK.finditer(text):
            found = _calls(_json(block.group(1).strip()), allowed)
            if found is None:
                return text, []
            calls += found
        return _BLOCK.sub("", text).strip(), calls
    found = _calls(_json(text.strip()), allowed)
    return ("", found) if found else (text, [])


def _may_start_call(text: str) -> bool:
    """Whether an answer beginning with ``text`` may turn out to be a tool call."""
    head = text.lstrip()
    if not head:
        return True
    if head[0] in "{[":
        return True
    return TOOL_CALL_OPEN.startswith(head[: len(TOOL_CALL_OPEN)]) or head.startswith("```")


class StreamParser:
    """Feed streamed text; content that cannot belong to a tool call comes out at once, the rest is
    held until :meth:`finish` decides."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        self.held = ""
        self.passing = False  # the answer is plain content (a ``<tool_call>`` may still follow)

    def feed(self, text: str) -> str:
        self.held += text
        if not self.passing:
            if _may_start_call(self.held):
                return ""
            self.passing = True
        at = self.held.find(TOOL_CALL_OPEN)
        if at >= 0:
            out, self.held = self.held[:at], self.held[at:]
            self.passing = False
            return out
        keep = next(
            (k for k in range(min(len(TOOL_CALL_OPEN) - 1, len(self.held)), 0, -1)
             if TOOL_CALL_OPEN.startswith(self.held[-k:])),
            0,
        )
        out = self.held[: len(self.held) - keep]
        self.held = self.held[len(self.held) - keep :]
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The remaining content and the calls the held text makes."""
        text, self.held = self.held, ""
        return parse(text, self.names)


def tool_names(tools: Iterable[Mapping[str, object]] | None) -> list[str]:
    """The function names of OpenAI/Ollama-shaped tool specs."""
    out = []
    for t in tools or ():
        fn = t.get("function")
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            out.append(str(fn["name"]))
    return out


def plan(
    tools: list[Tool] | None, choice: str | None
) -> tuple[list[dict[str, object]] | None, ForcedToolCall | None]:
    """The tool specs the template is given and the constraint of a forced choice. ``choice``:
    ``None``/``"auto"`` (the model decides), ``"none"`` (no tools), ``"required"`` (some call), or a
    tool's name (that call)."""
    if not tools:
        if choice not in (None, "none", "auto"):
            raise BadRequest("tool_choice needs tools")
        return None, None
    specs = [t.spec() for t in tools]
    if choice == "none":
        return None, None
    if choice in (None, "auto"):
        return specs, None
    if choice != "required" and choice not in tool_names(specs):
        raise BadRequest(f"tool_choice names {choice!r}, which is not one of the tools")
    return specs, forced_tool_call(specs, None if choice == "required" else choice)
