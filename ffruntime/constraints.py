"""Output constraints: a request's ``format`` / ``response_format`` / forced tool call checked into the
typed :data:`~ffruntime.runtime.Constraint`, and that constraint compiled to a GBNF grammar.

The routes call only the checking half (:func:`format_constraint`, :func:`json_schema`,
:func:`forced_tool_call`): a schema is a valid JSON Schema whose every ``$ref`` is a local ``#/…``
pointer that resolves, else a :class:`RequestRejected` naming the part of the request at fault. Each
text runtime compiles the constraint for its engine: llama.cpp through :func:`gbnf` (llama-cpp-python's
converter, imported when first needed; a schema it cannot convert is a :class:`RequestRejected` too),
ONNX Runtime GenAI through its own JSON-schema guidance.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence

from ffruntime.runtime import (
    Constraint,
    ForcedToolCall,
    FreeText,
    JsonObject,
    JsonSchema,
    RequestRejected,
)

MAX_SCHEMA_BYTES = 256 * 1024


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


def schema_grammar(schema: Mapping[str, object], source: str) -> str:
    """The GBNF of JSON texts valid for ``schema`` (already checked)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar: str = json_schema_to_gbnf(json.dumps(schema))
    except (AssertionError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise RequestRejected(f"{source}: this JSON schema cannot be turned into a grammar: {exc}") from None
    return grammar


def json_grammar() -> str:
    from llama_cpp.llama_grammar import JSON_GBNF

    return str(JSON_GBNF)


def gbnf(constraint: Constraint) -> str | None:
    """The GBNF grammar that enforces ``constraint`` (llama.cpp's form); None for free text."""
    match constraint:
        case FreeText():
            return None
        case JsonObject():
            return json_grammar()
        case JsonSchema(schema, source):
            return schema_grammar(schema, source)
        case ForcedToolCall(tools, name):
            return schema_grammar(tool_call_schema(tools, name), "tools")
