"""The subset of Go's text/template that Ollama Modelfile TEMPLATEs use.

Supported: ``{{ .Field }}`` and nested ``{{ .Function.Name }}``, ``{{ . }}``, ``{{ json .Field }}``,
``{{ if X }}…{{ else if Y }}…{{ else }}…{{ end }}`` where X is ``.Field``, ``not .Field`` or
``eq .Field "text"``, ``{{ range .Messages }}…{{ end }}`` (``.Role``, ``.Content``, ``.ToolCalls``
inside, ``$.System`` / ``$.Tools`` for the top level), and the ``{{-`` / ``-}}`` whitespace trims. A
mapping or list prints as JSON, as Ollama's tool types do. Anything else is a :class:`TemplateError`
naming the action, never silently wrong output.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
Value = object
Scope = Mapping[str, Value]


class Struct(dict[str, object]):
    """A Go struct for a template: fields by their Go names (``.Function.Name``), printed as JSON in its
    wire form (lowercase keys), as Ollama's tool types print."""

    def __init__(self, fields: Mapping[str, object], wire: object) -> None:
        super().__init__(fields)
        self.wire = wire


def _plain(v: Value) -> Value:
    if isinstance(v, Struct):
        return v.wire
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


class TemplateError(ValueError):
    """The template uses Go template syntax outside the supported subset."""


@dataclass
class _Node:
    kind: str  # "text", "var", "if", "range"
    text: str = ""
    branches: list[tuple[str | None, list[_Node]]] = field(default_factory=list)
    body: list[_Node] = field(default_factory=list)


def _tokens(src: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        if out and out[-1][0] == "trim":
            out.pop()
            text = text.lstrip()
        out.append(("text", text))
        action = m.group(2)
        if not action.startswith("/*"):
            out.append(("action", action))
        if m.group(3):
            out.append(("trim", ""))
        pos = m.end()
    text = src[pos:]
    if out and out[-1][0] == "trim":
        out.pop()
        text = text.lstrip()
    out.append(("text", text))
    return out


def _parse(tokens: list[tuple[str, str]], i: int, stops: tuple[str, ...]) -> tuple[list[_Node], int, str]:
    nodes: list[_Node] = []
    while i < len(tokens):
        kind, val = tokens[i]
        i += 1
        if kind == "text":
            if val:
                nodes.append(_Node("text", val))
            continue
        word = val.split(None, 1)[0] if val else ""
        if word in stops or (val.startswith("else") and "else" in stops):
            return nodes, i, val
        if word == "if":
            node = _Node("if")
            cond: str | None = val[2:].strip()
            while True:
                body, i, end = _parse(tokens, i, ("else", "end"))
                node.branches.append((cond, body))
                if end == "end":
                    break
                cond = end[4:].strip()[2:].strip() if end.startswith("else if") else None
            nodes.append(node)
        elif word == "range":
            body, i, end = _parse(tokens, i, ("end",))
            nodes.append(_Node("range", val[5:].strip(), body=body))
        elif val.startswith(".") or val.startswith("$"):
            nodes.append(_Node("var", val))
        elif word == "json" and len(val.split()) == 2:
            nodes.append(_Node("json", val.split()[1]))
        else:
            raise TemplateError(f"unsupported template action {{{{ {val} }}}}")
    if stops:
        raise TemplateError(f"template ends inside a block (missing {{{{ {stops[-1]} }}}})")
    return nodes, i, ""


def _lookup(name: str, scope: Value, top: Value) -> Value:
    if name in (".", "$"):
        return scope if name == "." else top
    if not re.fullmatch(r"\$?(\.[A-Za-z_]\w*)+", name):
        raise TemplateError(f"unsupported field {name!r}")
    value: Value = top if name.startswith("$") else scope
    for key in name.lstrip("$").split(".")[1:]:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _text(v: Value) -> str:
    if v is None or isinstance(v, bool):
        return ""
    if isinstance(v, Mapping | list | tuple):
        return json.dumps(_plain(v), ensure_ascii=False)
    return str(v)


def _truth(cond: str, scope: Value, top: Value) -> bool:
    parts = shlex.split(cond)
    if len(parts) == 1:
        return bool(_lookup(parts[0], scope, top))
    if len(parts) == 2 and parts[0] == "not":
        return not _lookup(parts[1], scope, top)
    if len(parts) == 3 and parts[0] == "eq":
        return _lookup(parts[1], scope, top) == parts[2]
    raise TemplateError(f"unsupported condition {cond!r}")


def _render(nodes: list[_Node], scope: Value, top: Value) -> str:
    out: list[str] = []
    for n in nodes:
        if n.kind == "text":
            out.append(n.text)
        elif n.kind == "var":
            out.append(_text(_lookup(n.text, scope, top)))
        elif n.kind == "json":
            out.append(json.dumps(_plain(_lookup(n.text, scope, top)), ensure_ascii=False))
        elif n.kind == "if":
            for cond, body in n.branches:
                if cond is None or _truth(cond, scope, top):
                    out.append(_render(body, scope, top))
                    break
        elif n.kind == "range":
            items = _lookup(n.text, scope, top)
            if items is None:  # Go ranges over a nil slice without a word
                continue
            if not isinstance(items, list | tuple):
                raise TemplateError(f"range over {n.text!r}, which is not a list")
            for item in items:
                out.append(_render(n.body, item, top))
    return "".join(out)


def render(template: str, values: Scope) -> str:
    nodes, _, _ = _parse(_tokens(template), 0, ())
    return _render(nodes, values, values)


def uses_messages(template: str) -> bool:
    return ".Messages" in template


def uses_tools(template: str) -> bool:
    return ".Tools" in template
