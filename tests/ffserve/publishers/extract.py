"""Keep the component schemas ff's OpenAI-shaped answers are checked against, from OpenAI's published
OpenAPI document, as test data (``openai_schemas.json``) with its source and revision named.

    git -C openai-openapi show <commit>:openapi.json > /tmp/openapi.json
    python3 tests/ffserve/publishers/extract.py /tmp/openapi.json <commit>

Only the schemas reachable by ``$ref`` from :data:`ROOTS` are kept (the whole document is 3.4 MB).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

REPOSITORY = "https://github.com/openai/openai-openapi"
ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "Response",
    "ResponseStreamEvent",
    "ErrorResponse",
)
OUT = Path(__file__).with_name("openai_schemas.json")


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value.rsplit("/", 1)[-1]
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def extract(document: dict[str, object], commit: str) -> dict[str, object]:
    components = document["components"]
    assert isinstance(components, dict)
    schemas = components["schemas"]
    kept: dict[str, object] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in kept:
            kept[name] = schemas[name]
            todo.extend(_refs(schemas[name]))
    info = document["info"]
    assert isinstance(info, dict)
    return {
        "x-source": {
            "repository": REPOSITORY,
            "path": "openapi.json",
            "commit": commit,
            "openapi": document["openapi"],
            "info.version": info["version"],
            "roots": list(ROOTS),
        },
        "components": {"schemas": dict(sorted(kept.items()))},
    }


if __name__ == "__main__":
    doc = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    OUT.write_text(json.dumps(extract(doc, sys.argv[2]), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(json.loads(OUT.read_text())['components']['schemas'])} schemas")
