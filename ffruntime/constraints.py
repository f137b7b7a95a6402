"""GBNF grammars for constrained decoding: JSON, a JSON schema, a forced tool call.

A schema is checked before it is converted (a valid JSON Schema; every ``$ref`` a local ``#/…``
pointer that resolves), and any failure of llama.cpp's converter is a :class:`RequestRejected` that
names the part of the request at fault, so a client's schema never reaches the engine half-built.
The converter is llama-cpp-python's (``llama_cpp.llama_grammar``), imported when first needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ffruntime.runtime import Format, RequestRejected

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


def schema_grammar(schema: Mapping[str, object], where: str) -> str:
    """The GBNF of JSON texts valid for ``schema``."""
    check_schema(schema, where)
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar: str = json_schema_to_gbnf(json.dumps(schema))
    except (AssertionError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise RequestRejected(f"{where}: this JSON schema cannot be turned into a grammar: {exc}") from None
    return grammar


def json_grammar() -> str:
    from llama_cpp.llama_grammar import JSON_GBNF

    return str(JSON_GBNF)


def format_grammar(fmt: Format, where: str = "format") -> str | None:
    """The grammar for a request's ``format``: any JSON object, or JSON valid for a schema."""
    if fmt is None:
        return None
    if fmt == "json":
        return json_grammar()
    if not isinstance(fmt, dict):
        raise RequestRejected(f'{where}: must be "json" or a JSON schema object')
    return schema_grammar(fmt, where)


def tool_call_schema(tools: Sequence[Mapping[str, Any]], name: str | None = None) -> dict[str, object]:
    """The schema of one call ``{"name": …, "arguments": {…}}`` to ``name`` (or to any of ``tools``)."""
    options: list[dict[str, object]] = []
    for tool in tools:
        fn = tool.get("function") or {}
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


def tool_call_grammar(tools: Sequence[Mapping[str, Any]], name: str | None = None) -> str:
    """A grammar that forces one valid call (a forced ``tool_choice``)."""
    return schema_grammar(tool_call_schema(tools, name), "tools")
