"""Output constraints: a request's ``format`` / ``response_format`` / forced tool call checked into the
typed :data:`~ffruntime.runtime.Constraint`, and that constraint compiled by llguidance.

The routes call only the checking half (:func:`format_constraint`, :func:`json_schema`,
:func:`forced_tool_call`): a schema is a valid JSON Schema whose every ``$ref`` is a local ``#/…``
pointer that resolves, else a :class:`RequestRejected` naming the part of the request at fault.

Every constraint is a JSON schema (:func:`constraint_schema`), and one engine enforces them all:
llguidance (chosen by measurement over xgrammar and outlines-core: docs/benchmarks.md). The llama.cpp
runtime compiles :func:`guidance_grammar` into a token matcher (:mod:`ffruntime.llamacpp.guide`); ONNX
Runtime GenAI hands the same schema to the llguidance it embeds. A schema using a feature llguidance
cannot enforce (``uniqueItems``, ``not``, ``if``/``then``, an unknown ``format``, a look-around pattern)
is an :class:`~ffruntime.runtime.UnsupportedSchema` naming it: a 400, before any decoding.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from ffruntime.errors import BackendUnavailable
from ffruntime.runtime import (
    Constraint,
    ForcedToolCall,
    FreeText,
    JsonObject,
    JsonSchema,
    RequestRejected,
    UnsupportedSchema,
)

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions
else:
    JsonCompileOptions = dict

MAX_SCHEMA_BYTES = 256 * 1024
ANY_OBJECT: Mapping[str, object] = {"type": "object"}  # format "json" / response_format json_object
JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
"""How the compiled JSON is spaced: one space after each comma and colon, no other whitespace. llguidance
lets a gap between tokens repeat without end even under a bounded ``whitespace_pattern`` (SmolLM2 wrote
hundreds of ``\\n`` lines at temperature 1 and hit the length limit), so whitespace is fixed instead."""


def _refs(node: object, path: str = "") -> Iterator[tuple[str, object]]:
    stack: list[tuple[str, object]] = [(path, node)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            if "$ref" in value:
                yield where or "/", value["$ref"]
            stack.extend((f"{where}/{k}", v) for k, v in value.items() if k != "$ref")
        elif isinstance(value, list):
            stack.extend((f"{where}/{i}", v) for i, v in enumerate(value))


def _resolves(root: Mapping[str, object], ref: str) -> bool:
    if ref == "#":
        return True
    if not ref.startswith("#/"):
        return False
    node: object = root
    for raw in ref[2:].split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return False
    return True


def check_schema(schema: Mapping[str, object], where: str) -> None:
    """Raise :class:`RequestRejected` unless ``schema`` is a JSON Schema whose references resolve."""
    import jsonschema

    try:
        text = json.dumps(schema)
    except (TypeError, ValueError, RecursionError) as exc:
        raise RequestRejected(f"{where}: not a JSON schema: {exc}") from None
    if len(text) > MAX_SCHEMA_BYTES:
        raise RequestRejected(f"{where}: the JSON schema is over {MAX_SCHEMA_BYTES} bytes")
    try:
        jsonschema.validators.validator_for(schema).check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        at = "/".join(str(p) for p in exc.absolute_path) or "/"
        raise RequestRejected(f"{where}: not a valid JSON schema at {at}: {exc.message}") from None
    except RecursionError:
        raise RequestRejected(f"{where}: the JSON schema nests too deeply") from None
    for at, ref in _refs(schema):
        if not isinstance(ref, str) or not _resolves(schema, ref):
            raise RequestRejected(
                f"{where}: $ref {ref!r} at {at} does not resolve "
                "(only local references such as '#/$defs/name' are supported)"
            )


def json_schema(schema: Mapping[str, object], source: str = "format") -> JsonSchema:
    """The constraint for a client's JSON schema, sent in the request field ``source`` (checked)."""
    check_schema(schema, source)
    return JsonSchema(schema, source)


def format_constraint(fmt: object, source: str = "format") -> Constraint:
    """A request's ``format``: none or ``""`` (free text), ``"json"`` (any JSON object) or a JSON schema."""
    if fmt is None or fmt == "":
        return FreeText()
    if fmt == "json":
        return JsonObject()
    if not isinstance(fmt, dict):
        raise RequestRejected(f'{source}: must be "json" or a JSON schema object')
    return json_schema(fmt, source)


def tool_call_schema(tools: Sequence[Mapping[str, object]], name: str | None = None) -> dict[str, object]:
    """The schema of one call ``{"name": …, "arguments": {…}}`` to ``name`` (or to any of ``tools``)."""
    options: list[dict[str, object]] = []
    for tool in tools:
        inner = tool.get("function")
        fn: Mapping[str, object] = inner if isinstance(inner, Mapping) else {}
        if name is not None and fn.get("name") != name:
            continue
        params = fn.get("parameters") or {"type": "object"}
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn.get("name")}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    if not options:
        raise RequestRejected(f"tool_choice names {name!r}, which is not one of the tools")
    return options[0] if len(options) == 1 else {"anyOf": options}


def forced_tool_call(tools: Sequence[Mapping[str, object]], name: str | None = None) -> ForcedToolCall:
    """The constraint of a forced ``tool_choice`` (``name``, or None for ``required``), checked."""
    check_schema(tool_call_schema(tools, name), "tools")
    return ForcedToolCall(tuple(tools), name)


def constraint_schema(constraint: Constraint) -> dict[str, object] | None:
    """The JSON schema the output must match (every engine compiles this one); None for free text."""
    match constraint:
        case FreeText():
            return None
        case JsonObject():
            return dict(ANY_OBJECT)
        case JsonSchema(schema):
            return dict(schema)
        case ForcedToolCall(tools, name):
            return tool_call_schema(tools, name)


FORMAT_MAX_LENGTH = {"time": 24, "date-time": 35, "email": 64}
"""RFC 3339 times allow any number of fractional digits, and an email address's parts may repeat; a
model may write them forever (SmolLM2 did, at temperatures 0 and 1). These formats compile with a
``maxLength``: times still admit every offset and nanosecond precision (``23:59:60.123456789+01:00``; a
date-time is ``YYYY-MM-DDT`` and that); email addresses are held to 64 characters, a practical bound
narrower than RFC 5321's 254 (an answer is still valid for the schema, only shorter)."""
PATTERN_MAX_LENGTH = 128
"""A ``pattern`` with an unbounded repeat (``^[0-9]+\\.[0-9]+$``) lets a model write digits until its
token limit, which ends the answer inside the string (SmolLM2 did at temperature 1: 2 of 1,480 answers
of bench/constraints.py). A pattern string without a ``maxLength`` compiles with this one: the engine then
steers it to a match and the closing quote in time (an answer is still valid for the schema)."""
_NOT_SCHEMAS = frozenset({"enum", "const", "default", "examples"})  # values, never schemas


def bounded(schema: object) -> object:
    """A copy of ``schema`` whose time, date-time and email strings (FORMAT_MAX_LENGTH) and pattern strings
    (PATTERN_MAX_LENGTH) have a bounded length; every string it admits is admitted by ``schema``."""
    if isinstance(schema, list):
        return [bounded(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _NOT_SCHEMAS else bounded(v) for k, v in schema.items()}
    fmt = out.get("format")
    limit = FORMAT_MAX_LENGTH.get(fmt) if isinstance(fmt, str) else None
    if limit is None and isinstance(out.get("pattern"), str):
        limit = PATTERN_MAX_LENGTH
    if limit is not None:
        current = out.get("maxLength")
        out["maxLength"] = min(current, limit) if isinstance(current, int) else limit
    return out


def _feature(error: str) -> str:
    """The schema feature an llguidance error names (its messages are the source of the wording)."""
    head = error.strip().splitlines()[0] if error.strip() else error
    if m := re.match(r"Unimplemented keys: \[(.*)\]", head):
        return ", ".join(k.strip().strip('"') for k in m.group(1).split(",")) or head
    if m := re.match(r"Unknown format: (.+)", head):
        return f"format {m.group(1).strip()!r}"
    lines = [line.strip() for line in error.strip().splitlines()]
    if "regex" in head.lower() and len(lines) > 1:
        return f"the pattern {lines[1]!r}"
    return head[:200]


def guidance_grammar(constraint: Constraint) -> str | None:
    """The llguidance grammar that enforces ``constraint`` (tokenizer-independent, checked); None for
    free text. A schema using a feature llguidance cannot enforce is an :class:`UnsupportedSchema`."""
    schema = constraint_schema(constraint)
    if schema is None:
        return None
    try:
        from llguidance import LLMatcher
    except ImportError as exc:
        raise BackendUnavailable.missing("llguidance", "gguf", "Constrained output (JSON schemas)") from exc
    grammar = LLMatcher.grammar_from_json_schema(json.dumps(bounded(schema)), overrides=JSON_OPTIONS)
    failed, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        error = messages[0] if messages else "invalid grammar"
        source = constraint.source if isinstance(constraint, JsonSchema) else "tools"
        feature = _feature(error)
        detail = " ".join(line.strip() for line in error.splitlines() if line.strip())[:300]
        raise UnsupportedSchema(
            f"{source}: the JSON schema uses {feature}, which constrained decoding cannot enforce ({detail})",
            feature,
        )
    return grammar
