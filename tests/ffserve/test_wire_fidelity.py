"""Every OpenAI-shaped body and stream event ff sends, validated against the schemas of OpenAI's own
published OpenAPI document (``publishers/openai_schemas.json``: source and revision in its
``x-source``), not only read by the ``openai`` client, which parses leniently; the Ollama routes'
answers likewise against Ollama's ``docs/openapi.yaml`` (``publishers/ollama_schemas.json``).

Two places where the published document does not describe what OpenAI's own server sends, each
handled by name (and only there): a streamed legacy completion's chunks before the last carry
``finish_reason: null`` (the schema's enum has no null), and ``encoding_format: "base64"`` embeddings
are strings (the schema says arrays of numbers): those are checked as what they stand for.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator

import httpx
import pytest

from tests.ffserve.publishers import spec
from tests.ffserve.serve_testkit import Server

QUESTION = "What is the capital of France? Answer in one sentence."
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12}
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]


def _post(server: Server, path: str, body: dict[str, object]) -> object:
    r = httpx.post(server.url + path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _events(server: Server, path: str, body: dict[str, object]) -> Iterator[tuple[str | None, object]]:
    """(event name, JSON data) of each SSE event; ``[DONE]`` ends it."""
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name: str | None = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                if line == "data: [DONE]":
                    return
                yield name, json.loads(line[6:])
                name = None


def _valid(schema: str, body: object, publisher: str = "openai") -> None:
    bad = spec.problems(schema, body, publisher)
    where = f"{publisher} {spec.source(publisher)['commit'][:12]}"
    assert not bad, f"{schema} ({where}):\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("publisher", "repository"),
    [("openai", "https://github.com/openai/openai-openapi"), ("ollama", "https://github.com/ollama/ollama")],
)
def test_the_kept_schemas_name_their_source(publisher: str, repository: str) -> None:
    src = spec.source(publisher)
    assert src["repository"] == repository and len(src["commit"]) == 40
    assert src["openapi"].startswith("3.1")


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"logprobs": True, "top_logprobs": 2},
        {"tools": TOOLS, "tool_choice": "required", "max_tokens": 60},
    ],
    ids=["plain", "logprobs", "tools"],
)
def test_chat_completions(server: Server, extra: dict[str, object]) -> None:
    body = {**CHAT, **extra}
    whole = _post(server, "/v1/chat/completions", body)
    _valid("CreateChatCompletionResponse", whole)
    chunks = [data for _, data in _events(server, "/v1/chat/completions",
                                         {**body, "stream_options": {"include_usage": True}})]
    assert len(chunks) > 2
    for chunk in chunks:
        _valid("CreateChatCompletionStreamResponse", chunk)
    if "tools" in extra:
        assert isinstance(whole, dict) and whole["choices"][0]["message"]["tool_calls"]


@pytest.mark.parametrize("extra", [{}, {"logprobs": 2, "echo": False}], ids=["plain", "logprobs"])
def test_completions(server: Server, extra: dict[str, object]) -> None:
    body = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 6, **extra}
    _valid("CreateCompletionResponse", _post(server, "/v1/completions", body))
    chunks = [chunk for _, chunk in _events(server, "/v1/completions", body)]
    for i, chunk in enumerate(chunks):
        assert isinstance(chunk, dict)
        (choice,) = chunk["choices"]
        if i < len(chunks) - 1:  # the spec gap: null until the last chunk, as OpenAI's server sends
            assert choice["finish_reason"] is None
            chunk = {**chunk, "choices": [{**choice, "finish_reason": "stop"}]}
        _valid("CreateCompletionResponse", chunk)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # type: ignore[index]


def test_embeddings_models_and_errors(server: Server) -> None:
    body: dict[str, object] = {"model": "smollm2", "input": ["hello", "world"]}
    floats = _post(server, "/v1/embeddings", body)
    _valid("CreateEmbeddingResponse", floats)
    packed = _post(server, "/v1/embeddings", {**body, "encoding_format": "base64"})
    assert isinstance(packed, dict) and isinstance(floats, dict)
    for item in packed["data"]:  # the spec gap: a base64 string of little-endian f32 stands for the list
        raw = base64.b64decode(item["embedding"])
        item["embedding"] = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    _valid("CreateEmbeddingResponse", packed)
    assert len(packed["data"][0]["embedding"]) == len(floats["data"][0]["embedding"])
    _valid("ListModelsResponse", httpx.get(server.url + "/v1/models").json())
    _valid("Model", httpx.get(server.url + "/v1/models/smollm2:latest").json())
    for r in (
        httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "model": "no-such-model"}),
        httpx.post(server.url + "/v1/chat/completions", json={"model": "smollm2"}),
        httpx.post(server.url + "/v1/responses", json={"model": "smollm2", "input": "hi",
                                                      "previous_response_id": "resp_1"}),
    ):
        assert r.status_code in (400, 404)
        _valid("ErrorResponse", r.json())


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"text": {"format": {"type": "json_schema", "name": "city", "strict": True, "schema": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
            "additionalProperties": False}}}},
        {"tools": [{"type": "function", **TOOLS[0]["function"]}], "tool_choice": "required",  # type: ignore[dict-item]
         "max_output_tokens": 60},
        {"max_output_tokens": 3, "instructions": "Be brief."},
    ],
    ids=["plain", "json_schema", "tools", "incomplete"],
)
def test_responses(server: Server, extra: dict[str, object]) -> None:
    body = {"model": "smollm2", "input": QUESTION, "max_output_tokens": 24, **extra}
    whole = _post(server, "/v1/responses", body)
    _valid("Response", whole)
    assert isinstance(whole, dict)
    kinds = {item["type"] for item in whole["output"]}
    assert kinds == ({"function_call"} if "tools" in extra else {"message"}), whole["output"]
    events = list(_events(server, "/v1/responses", body))
    schemas = spec.stream_event_schemas()
    for name, event in events:
        assert isinstance(event, dict) and name == event["type"]
        _valid(schemas[event["type"]], event)
    assert events[-1][0] == ("response.incomplete" if "instructions" in extra else "response.completed")
    if "tools" in extra:
        assert any(name == "response.function_call_arguments.done" for name, _ in events)


def _ndjson(server: Server, path: str, body: dict[str, object]) -> list[object]:
    with httpx.stream("POST", server.url + path, json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


@pytest.mark.parametrize(
    ("path", "body", "whole", "event"),
    [
        ("/api/generate", {"prompt": QUESTION}, "GenerateResponse", "GenerateStreamEvent"),
        ("/api/chat", {"messages": CHAT["messages"]}, "ChatResponse", "ChatStreamEvent"),
        ("/api/chat", {"messages": CHAT["messages"], "tools": TOOLS, "logprobs": True, "top_logprobs": 2},
         "ChatResponse", "ChatStreamEvent"),
    ],
    ids=["generate", "chat", "chat-tools-logprobs"],
)
def test_ollama_generation(
    server: Server, path: str, body: dict[str, object], whole: str, event: str
) -> None:
    body = {"model": "smollm2", "options": {"num_predict": 12}, **body}
    _valid(whole, _post(server, path, {**body, "stream": False}), "ollama")
    lines = _ndjson(server, path, body)
    assert len(lines) > 2
    for line in lines:
        _valid(event, line, "ollama")


def test_ollama_models_embed_and_errors(server: Server) -> None:
    _valid("EmbedResponse", _post(server, "/api/embed", {"model": "smollm2", "input": ["a", "b"]}), "ollama")
    _valid("ListResponse", httpx.get(server.url + "/api/tags").json(), "ollama")
    _valid("PsResponse", httpx.get(server.url + "/api/ps").json(), "ollama")
    _valid("ShowResponse", _post(server, "/api/show", {"model": "smollm2"}), "ollama")
    _valid("VersionResponse", httpx.get(server.url + "/api/version").json(), "ollama")
    missing = httpx.post(server.url + "/api/chat", json={"model": "no-such-model", "messages": []})
    assert missing.status_code == 404
    _valid("ErrorResponse", missing.json(), "ollama")
