"""Keep the component schemas ff's answers are checked against, from the publishers' own OpenAPI
documents, as test data (``<publisher>_schemas.json``) with source and revision named.

    git -C openai-openapi show <commit>:openapi.json > /tmp/openapi.json
    python3 tests/ffserve/publishers/extract.py openai /tmp/openapi.json <commit>
    git -C ollama show <commit>:docs/openapi.yaml > /tmp/ollama.yaml
    python3 tests/ffserve/publishers/extract.py ollama /tmp/ollama.yaml <commit>

Only the schemas reachable by ``$ref`` from the publisher's roots are kept (OpenAI's document is 3.4 MB).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

OPENAI_ROOTS = (
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
OLLAMA_ROOTS = (
    "GenerateResponse",
    "GenerateStreamEvent",
    "ChatResponse",
    "ChatStreamEvent",
    "EmbedResponse",
    "ListResponse",
    "PsResponse",
    "ShowResponse",
    "VersionResponse",
    "StatusEvent",
    "StatusResponse",
    "ErrorResponse",
)
PUBLISHERS = {  # name: (repository, path in it, roots)
    "openai": ("https://github.com/openai/openai-openapi", "openapi.json", OPENAI_ROOTS),
    "ollama": ("https://github.com/ollama/ollama", "docs/openapi.yaml", OLLAMA_ROOTS),
}


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


def extract(publisher: str, document: dict[str, object], commit: str) -> dict[str, object]:
    repository, path, roots = PUBLISHERS[publisher]
    components = document["components"]
    assert isinstance(components, dict)
    schemas = components["schemas"]
    kept: dict[str, object] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in kept:
            kept[name] = schemas[name]
            todo.extend(_refs(schemas[name]))
    info = document["info"]
    assert isinstance(info, dict)
    return {
        "x-source": {
            "repository": repository,
            "path": path,
            "commit": commit,
            "openapi": document["openapi"],
            "info.version": info["version"],
            "roots": list(roots),
        },
        "components": {"schemas": dict(sorted(kept.items()))},
    }


if __name__ == "__main__":
    name, source, revision = sys.argv[1:4]
    text = Path(source).read_text(encoding="utf-8")
    doc = yaml.safe_load(text) if source.endswith((".yaml", ".yml")) else json.loads(text)
    out = Path(__file__).with_name(f"{name}_schemas.json")
    kept = extract(name, doc, revision)
    out.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{out}: {len(json.loads(out.read_text())['components']['schemas'])} schemas")
