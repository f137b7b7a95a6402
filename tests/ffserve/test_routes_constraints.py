"""The routes turn ``format`` / ``response_format`` / ``tool_choice`` into the typed output constraint
the runtime receives (and build no grammar): an in-process app whose loader records each request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from ffruntime.runtime import (
    Capability,
    Constraint,
    Done,
    Event,
    ForcedToolCall,
    FreeText,
    GenerationRequest,
    JsonObject,
    JsonSchema,
    Runtime,
    Token,
)
from ffruntime.settings import LoadSettings
from ffserve.app import create_app
from ffserve.settings import Settings
from registry.artifact import ModelFiles, VariantRef
from registry.store import Store
from tests.models import add_model

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
USER = [{"role": "user", "content": "hi"}]


class Recorder:
    """A text runtime that answers ``{}`` and keeps every request it was given."""

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    capabilities = frozenset({Capability.CHAT, Capability.GENERATE})
    memory_bytes = 1
    context_length = 2048
    parallel = 1

    async def close(self) -> None:
        return None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        yield Token("{}")
        yield Done("stop", 1, 1, 0, 0)


App = tuple[TestClient, Recorder]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[App]:
    store = Store(tmp_path_factory.mktemp("constraints") / "store")
    add_model(store, "m:latest", {"q4_1": smollm2_gguf})
    recorder = Recorder()

    async def load(variant: VariantRef, files: ModelFiles, settings: LoadSettings) -> Runtime:
        return recorder

    with TestClient(create_app(Settings(), store, loader=load)) as client:
        yield client, recorder


def _sent(app: App, path: str, body: dict[str, object]) -> Constraint:
    client, recorder = app
    r = client.post(path, json={"model": "m", "stream": False, **body})
    assert r.status_code == 200, r.text
    return recorder.requests[-1].constraint


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [(None, FreeText()), ("", FreeText()), ("json", JsonObject()), (CITY, JsonSchema(CITY, "format"))],
)
def test_ollama_format(app: App, fmt: object, expected: Constraint) -> None:
    assert _sent(app, "/api/generate", {"prompt": "hi", "format": fmt}) == expected
    assert _sent(app, "/api/chat", {"messages": USER, "format": fmt}) == expected


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        (None, FreeText()),
        ({"type": "text"}, FreeText()),
        ({"type": "json_object"}, JsonObject()),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, JsonObject()),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": CITY, "strict": True}},
            JsonSchema(CITY, "response_format.json_schema.schema"),
        ),
    ],
)
def test_openai_response_format(app: App, response_format: object, expected: Constraint) -> None:
    body = {"messages": USER, "response_format": response_format}
    assert _sent(app, "/v1/chat/completions", body) == expected


def test_a_forced_tool_choice_wins_over_the_format(app: App) -> None:
    body: dict[str, object] = {"messages": USER, "tools": [WEATHER]}
    body["response_format"] = {"type": "json_object"}
    required = _sent(app, "/v1/chat/completions", {**body, "tool_choice": "required"})
    assert required == ForcedToolCall((WEATHER,))
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert _sent(app, "/v1/chat/completions", {**body, "tool_choice": named}) == ForcedToolCall(
        (WEATHER,), "get_weather"
    )
    assert _sent(app, "/v1/chat/completions", {**body, "tool_choice": "auto"}) == JsonObject()
    ollama = {"messages": USER, "tools": [WEATHER], "format": "json", "options": {"tool_choice": "required"}}
    assert _sent(app, "/api/chat", ollama) == ForcedToolCall((WEATHER,))


def test_a_bad_schema_is_a_400_before_the_runtime(app: App) -> None:
    client, recorder = app
    before = len(recorder.requests)
    bad = {"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}
    r = client.post("/api/chat", json={"model": "m", "messages": USER, "format": bad, "stream": False})
    assert r.status_code == 400 and r.json()["error"].startswith("format: $ref")
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": USER, "response_format": rf})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert message.startswith("response_format.json_schema.schema: not a valid JSON schema")
    assert len(recorder.requests) == before
