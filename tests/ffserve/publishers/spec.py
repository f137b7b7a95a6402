"""Validators for the publishers' own component schemas (``openai_schemas.json``,
``ollama_schemas.json``; see ``extract.py``).

OpenAPI 3.1 schemas are JSON Schema 2020-12, except for the OpenAPI 3.0 ``nullable: true`` a few of
OpenAI's still carry; :func:`_null_ok` rewrites those to allow ``null`` the way 3.0 meant. ``$ref``s
resolve inside the kept document.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

HERE = Path(__file__).parent


def _null_ok(node: Any) -> Any:
    """``node`` with every ``nullable: true`` schema turned into one that also admits ``null``."""
    if isinstance(node, list):
        return [_null_ok(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _null_ok(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def document(publisher: str = "openai") -> Mapping[str, Any]:
    text = (HERE / f"{publisher}_schemas.json").read_text(encoding="utf-8")
    return _null_ok(json.loads(text))  # type: ignore[no-any-return]


def source(publisher: str = "openai") -> Mapping[str, str]:
    return document(publisher)["x-source"]  # type: ignore[no-any-return]


@functools.cache
def validator(name: str, publisher: str = "openai") -> Draft202012Validator:
    """A validator for component schema ``name`` (its ``$ref``s resolve within the document)."""
    components = copy.deepcopy(document(publisher)["components"])
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": components})


@functools.cache
def stream_event_schemas() -> Mapping[str, str]:
    """Each Responses streaming event's ``type`` → the name of its schema (from ``ResponseStreamEvent``)."""
    schemas = document()["components"]["schemas"]
    out: dict[str, str] = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        kind = schemas[name]["properties"]["type"]
        out[kind["enum"][0]] = name
    return out


def problems(name: str, body: object, publisher: str = "openai") -> list[str]:
    """Every way ``body`` breaks schema ``name``, each with the path where it does."""
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:300]}"
        for e in validator(name, publisher).iter_errors(body)
    ]
