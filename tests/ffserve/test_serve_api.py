"""Issue 11 through a real ``ff serve``: typed options, client mistakes as 4xx (never 500), upstream
failures as 502, embeddings ``dimensions``, structured output that always validates."""

from __future__ import annotations

import base64
import json
import math
import struct

import httpx
import jsonschema
import ollama
import openai
import pytest

from tests.ffserve.serve_testkit import Server, free_port

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "pets": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}


def _post(server: Server, path: str, body: dict[str, object] | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(
            server.url + path, content=body, timeout=120, headers={"Content-Type": "application/json"}
        )
    return httpx.post(server.url + path, json=body, timeout=120)


# --- typed options ---------------------------------------------------------------------------------
def test_null_and_unknown_options_are_accepted(server: Server) -> None:
    body = {
        "model": "smollm2",
        "prompt": "Count: one, two,",
        "raw": True,
        "stream": False,
        "options": {"mirostat": None, "top_k": None, "num_predict": 5, "frobnicate_level": 3},
    }
    r = _post(server, "/api/generate", body)
    assert r.status_code == 200, r.text
    assert r.json()["eval_count"] == 5 and r.json()["done_reason"] == "length"
    assert "frobnicate_level" in server.logs()  # ignored, with a warning


@pytest.mark.parametrize(
    ("options", "word"),
    [
        ({"num_ctx": "big"}, "num_ctx"),
        ({"mirostat": 7}, "mirostat"),
        ({"top_p": 2}, "top_p"),
        ({"seed": "42"}, "seed"),
        ({"use_mmap": "yes"}, "use_mmap"),
        ({"stop": "x" * 5000}, "stop"),
    ],
)
def test_wrongly_typed_options_are_400_naming_them(
    server: Server, options: dict[str, object], word: str
) -> None:
    r = _post(
        server,
        "/api/chat",
        {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "options": options},
    )
    assert r.status_code == 400 and word in r.json()["error"], r.text


def test_openai_fields_are_checked(ai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature"):
        ai.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "hi"}], temperature=5
        )


# --- client mistakes are 4xx -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", b'{"model": "smollm2", "prompt": "bad \\ud800 text", "stream": false}'),
        ("/api/chat", b'{"model": "smollm2", "messages": [{"role": "user", "content": "\\udfff"}]}'),
        ("/api/embed", b'{"model": "smollm2", "input": ["ok", "\\ud800"]}'),
        (
            "/v1/chat/completions",
            b'{"model": "smollm2", "messages": [{"role": "user", "content": "\\ud800"}]}',
        ),
        ("/v1/completions", b'{"model": "smollm2", "prompt": "\\ud83d"}'),
        ("/v1/embeddings", b'{"model": "smollm2", "input": "\\ud800"}'),
        ("/api/chat", b'{"model": "smollm2", "messages": [], "\\ud800": 1}'),
    ],
)
def test_lone_surrogate_is_400(server: Server, path: str, body: bytes) -> None:
    r = _post(server, path, body)
    assert r.status_code == 400, r.text
    assert "surrogate" in json.dumps(r.json())


def test_surrogate_pairs_are_text(server: Server) -> None:
    body = b'{"model": "smollm2", "prompt": "Say \\ud83d\\ude00", "stream": false, '
    body += b'"options": {"num_predict": 2}}'
    assert _post(server, "/api/generate", body).status_code == 200


def test_schema_the_converter_cannot_use_is_400(server: Server, ai: openai.OpenAI) -> None:
    bad = {"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}
    r = _post(
        server,
        "/api/chat",
        {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "format": bad, "stream": False},
    )
    assert r.status_code == 400 and "$ref" in r.json()["error"] and "/properties/a" in r.json()["error"]
    with pytest.raises(openai.BadRequestError, match=r"response_format.*\$ref"):
        ai.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}},
        )
    r = _post(server, "/api/generate", {"model": "smollm2", "prompt": "hi", "format": {"type": "nope"}})
    assert r.status_code == 400 and "format" in r.json()["error"]


def test_tool_mistakes_are_400(ai: openai.OpenAI, server: Server) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        ai.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "hi"}],
            tools=[tool],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )  # type: ignore[list-item]
    msgs = [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{not json"},
                }
            ],
        }
    ]
    r = _post(server, "/v1/chat/completions", {"model": "smollm2", "messages": msgs})
    assert r.status_code == 400 and "arguments" in r.json()["error"]["message"]
    r = _post(
        server,
        "/api/chat",
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "bad name!"}}],
        },
    )
    assert r.status_code == 400 and "tools" in r.json()["error"]


# --- upstream registry failures are 502 -------------------------------------------------------------
def test_pull_from_a_refusing_registry_is_502(server: Server) -> None:
    ref = f"127.0.0.1:{free_port()}/ns/nothing:v1"  # nobody listens there
    r = _post(server, "/api/pull", {"model": ref, "insecure": True, "stream": False})
    assert r.status_code == 502, r.text
    assert "cannot reach registry" in r.json()["error"] and ref.split("/")[0] in r.json()["error"]
    streamed = _post(server, "/api/pull", {"model": ref, "insecure": True})
    last = json.loads(streamed.text.strip().splitlines()[-1])
    assert streamed.status_code == 200 and "cannot reach registry" in last["error"]


def test_push_to_a_refusing_registry_is_502(server: Server, oc: ollama.Client) -> None:
    ref = f"127.0.0.1:{free_port()}/ns/copy:v1"
    oc.copy("tiny", ref)
    try:
        r = _post(server, "/api/push", {"model": ref, "insecure": True, "stream": False})
        assert r.status_code == 502 and "cannot reach registry" in r.json()["error"], r.text
    finally:
        oc.delete(ref)


# --- embeddings -----------------------------------------------------------------------------------------
def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_openai_dimensions_truncate_and_renormalise(ai: openai.OpenAI) -> None:
    full = ai.embeddings.create(model="smollm2", input="The cat sits on the mat.").data[0].embedding
    short = (
        ai.embeddings.create(model="smollm2", input="The cat sits on the mat.", dimensions=64)
        .data[0]
        .embedding
    )
    assert len(full) == 576 and len(short) == 64 and abs(_norm(short) - 1) < 1e-5
    head = full[:64]
    assert max(abs(a - b / _norm(head)) for a, b in zip(short, head, strict=True)) < 1e-5
    b64 = (
        ai.embeddings.create(
            model="smollm2", input="The cat sits on the mat.", dimensions=64, encoding_format="base64"
        )
        .data[0]
        .embedding
    )
    packed = base64.b64decode(b64)  # type: ignore[arg-type]
    assert struct.unpack(f"<{len(packed) // 4}f", packed) == pytest.approx(short, abs=1e-6)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        ai.embeddings.create(model="smollm2", input="x", dimensions=1000)


def test_ollama_dimensions_and_truncate(oc: ollama.Client) -> None:
    r = oc.embed(model="smollm2", input=["one", "two"], dimensions=32)
    assert [len(v) for v in r.embeddings] == [32, 32] and all(
        abs(_norm(list(v)) - 1) < 1e-5 for v in r.embeddings
    )
    long_text = " ".join(["word"] * 3000)
    assert len(oc.embed(model="smollm2", input=long_text).embeddings[0]) == 576  # truncate defaults to true
    with pytest.raises(ollama.ResponseError) as err:
        oc.embed(model="smollm2", input=long_text, truncate=False)
    assert err.value.status_code == 400 and "context" in err.value.error


# --- structured output ----------------------------------------------------------------------------------
def test_response_format_json_schema_strict_validates_20_of_20(ai: openai.OpenAI) -> None:
    valid = 0
    for seed in range(20):
        r = ai.chat.completions.create(
            model="smollm2",
            seed=seed,
            temperature=1.0,
            messages=[{"role": "user", "content": "Invent a person: their name, age and pets, as JSON."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON, "strict": True},
            },
        )
        content = r.choices[0].message.content or ""
        jsonschema.validate(json.loads(content), PERSON)
        assert r.choices[0].finish_reason == "stop"
        valid += 1
    assert valid == 20


def test_ollama_format_schema_validates(oc: ollama.Client) -> None:
    for seed in range(3):
        r = oc.chat(
            model="smollm2",
            messages=[{"role": "user", "content": "Invent a person as JSON."}],
            format=PERSON,
            options={"temperature": 1.0, "seed": seed},
        )
        jsonschema.validate(json.loads(r.message.content or ""), PERSON)
