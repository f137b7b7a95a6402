"""The unmodified ``ollama`` and ``openai`` clients and ``curl`` against a real ``ff serve``."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import time

import httpx
import ollama
import openai
import pytest

from tests.ffserve.serve_testkit import Server

# The bare question leaves SmolLM2 q8_0 0.04-0.16 logits between "The" and "L" (the start of
# "L'Étoile, ..."), which kernel paths (AVX2 vs AVX-512, a batch vs one token) tip either way; asked
# for one sentence, "The" leads by 1.6 on every path.
QUESTION = "What is the capital of France? Answer in one sentence."


# --- Ollama ------------------------------------------------------------------------------------------
def test_ollama_chat_says_paris(oc: ollama.Client) -> None:
    r = oc.chat(model="smollm2", messages=[{"role": "user", "content": QUESTION}])
    assert "Paris" in r.message.content, r.message.content
    assert r.done and r.done_reason == "stop"
    assert r.eval_count and r.eval_count > 0 and r.prompt_eval_count and r.prompt_eval_count > 10
    assert r.total_duration and r.eval_duration and r.total_duration >= r.eval_duration > 0


def test_ollama_chat_stream(oc: ollama.Client) -> None:
    msgs = [{"role": "user", "content": QUESTION}]
    parts = list(oc.chat(model="smollm2:latest", messages=msgs, stream=True))
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "Paris" in "".join(p.message.content or "" for p in parts)


def test_ollama_generate_and_stream(oc: ollama.Client) -> None:
    r = oc.generate(model="smollm2", prompt=QUESTION)
    assert "Paris" in r.response and r.context and len(r.context) > r.prompt_eval_count  # type: ignore[operator]
    chunks = list(oc.generate(model="smollm2", prompt=QUESTION, stream=True))
    assert "".join(c.response or "" for c in chunks) == r.response  # greedy (Modelfile temperature 0)


def test_ollama_generate_options_override_modelfile(oc: ollama.Client) -> None:
    r = oc.generate(model="smollm2", prompt="Count: one, two,", raw=True, options={"num_predict": 3})
    assert r.done_reason == "length" and r.eval_count == 3
    stopped = oc.generate(model="smollm2", prompt=QUESTION, options={"stop": ["Paris"]})
    assert "Paris" not in stopped.response and stopped.done_reason == "stop"


def test_ollama_template_and_system_from_the_artifact(oc: ollama.Client, server: Server) -> None:
    info = oc.show("tiny")
    assert "{{ .System }}" in (info.template or "")
    raw = httpx.post(server.url + "/api/show", json={"model": "tiny"}).json()
    assert raw["system"] == "You always answer in French."
    r = oc.generate(model="tiny", prompt="Say hello.")
    assert r.done and r.eval_count and r.eval_count <= 24  # num_predict 24 from params.json


def test_ollama_json_schema_format(oc: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    msgs = [{"role": "user", "content": QUESTION}]
    r = oc.chat(model="smollm2", messages=msgs, format=schema, options={"num_predict": 60})
    obj = json.loads(r.message.content or "")
    assert set(obj) == {"city", "country"}


def test_ollama_seed_reproduces_sampling(oc: ollama.Client) -> None:
    opts = {"temperature": 1.0, "seed": 42, "num_predict": 16}
    a = oc.generate(model="smollm2", prompt="Once upon a time", raw=True, options=opts).response
    b = oc.generate(model="smollm2", prompt="Once upon a time", raw=True, options=opts).response
    assert a == b and a


def test_ollama_embed(oc: ollama.Client) -> None:
    r = oc.embed(model="smollm2", input=["The cat sits.", "A cat is sitting.", "Stock markets fell."])
    vecs = r.embeddings
    assert len(vecs) == 3 and len(vecs[0]) == 576

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))  # the vectors are normalised

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])  # type: ignore[arg-type]
    assert abs(cos(vecs[0], vecs[0]) - 1) < 1e-3  # type: ignore[arg-type]
    old = oc.embeddings(model="smollm2", prompt="The cat sits.")
    assert len(old.embedding) == 576


def test_ollama_list_show_ps(oc: ollama.Client) -> None:
    names = {m.model for m in oc.list().models}
    assert {"smollm2:latest", "smollm2:latest-q8_0-cpu", "smollm2:latest-q4_k_m-cpu", "tiny:latest"} <= names
    info = oc.show("smollm2")
    assert info.details and info.details.quantization_level == "Q8_0" and info.details.format == "gguf"
    assert "temperature" in (info.parameters or "") and "chat" in (info.capabilities or [])
    oc.generate(model="smollm2", prompt="")  # an empty prompt loads the model
    running = {m.model: m for m in oc.ps().models}
    assert "smollm2:latest" in running and (running["smollm2:latest"].size or 0) > 100_000_000


def test_ollama_copy_delete_and_errors(oc: ollama.Client) -> None:
    oc.copy("smollm2", "copied:v1")
    assert "copied:v1" in {m.model for m in oc.list().models}
    oc.delete("copied:v1")
    assert "copied:v1" not in {m.model for m in oc.list().models}
    with pytest.raises(ollama.ResponseError) as err:
        oc.delete("copied:v1")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        oc.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404 and "not found" in err.value.error


def test_keep_alive_zero_unloads(oc: ollama.Client) -> None:
    oc.generate(model="tiny", prompt="", keep_alive="5m")
    assert "tiny:latest" in {m.model for m in oc.ps().models}
    r = oc.generate(model="tiny", prompt="", keep_alive=0)
    assert r.done_reason == "unload"
    assert "tiny:latest" not in {m.model for m in oc.ps().models}


# --- OpenAI ------------------------------------------------------------------------------------------
def test_openai_chat_says_paris(ai: openai.OpenAI) -> None:
    r = ai.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}])
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason == "stop" and r.usage and r.usage.completion_tokens > 0


def test_openai_chat_stream_with_usage(ai: openai.OpenAI) -> None:
    stream = ai.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": QUESTION}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > chunks[-1].usage.completion_tokens


def test_openai_completions_and_json_mode(ai: openai.OpenAI) -> None:
    r = ai.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=4)
    assert r.choices[0].finish_reason == "length" and r.usage and r.usage.completion_tokens == 4
    j = ai.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Give a JSON object with a key name."}],
        response_format={"type": "json_object"}, max_tokens=40,
    )
    assert j.choices[0].message.content is not None
    content = j.choices[0].message.content
    if j.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:
        assert content.lstrip().startswith("{")


def test_openai_embeddings_float_and_base64(ai: openai.OpenAI) -> None:
    f = ai.embeddings.create(model="smollm2", input=["hello", "world"])
    assert len(f.data) == 2 and len(f.data[0].embedding) == 576
    b64 = ai.embeddings.create(model="smollm2", input=["hello"], encoding_format="base64")
    assert isinstance(b64.data[0].embedding, str)
    packed = base64.b64decode(b64.data[0].embedding)
    decoded = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert max(abs(a - b) for a, b in zip(decoded, f.data[0].embedding, strict=True)) < 1e-6


def test_openai_models_and_errors(ai: openai.OpenAI) -> None:
    ids = {m.id for m in ai.models.list()}
    assert "smollm2:latest" in ids
    assert ai.models.retrieve("smollm2:latest").id == "smollm2:latest"
    with pytest.raises(openai.NotFoundError) as err:
        ai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert "not found" in str(err.value)
    with pytest.raises(openai.BadRequestError):
        ai.chat.completions.create(model="smollm2", messages=[])
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        ai.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}],
                                   tool_choice="required")


# --- curl ----------------------------------------------------------------------------------------------
def _curl(curl: str, *args: str) -> str:
    done = subprocess.run([curl, "-sS", *args], check=True, capture_output=True, text=True, timeout=120)
    return done.stdout


def test_curl_ndjson_and_sse(server: Server, curl: str) -> None:
    body = json.dumps({"model": "smollm2", "prompt": QUESTION})
    lines = [json.loads(x) for x in _curl(curl, server.url + "/api/generate", "-d", body).splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    assert isinstance(lines[-1]["eval_duration"], int) and "Paris" in "".join(x["response"] for x in lines)
    req = {"model": "smollm2", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    sse = _curl(curl, server.url + "/v1/chat/completions", "-H", "Content-Type: application/json", "-d",
                json.dumps(req))
    events = [e for e in sse.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert "Paris" in "".join(
        (json.loads(e[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or "" for e in events[:-1]
    )


def test_curl_errors_are_json(server: Server, curl: str) -> None:
    bad = '{"model": "smollm2", "messages": 3}'
    out = _curl(curl, "-w", "\n%{http_code}", server.url + "/api/chat", "-d", bad)
    body, code = out.rsplit("\n", 1)
    assert code == "400" and "messages" in json.loads(body)["error"]
    out = _curl(curl, "-w", "\n%{http_code}", server.url + "/api/generate", "-d", "{not json")
    body, code = out.rsplit("\n", 1)
    assert code == "400" and "JSON" in json.loads(body)["error"]
    out = _curl(curl, "-w", "\n%{http_code}", server.url + "/api/nothing-here")
    body, code = out.rsplit("\n", 1)
    assert code == "404" and "error" in json.loads(body)
    long_prompt = " ".join(["word"] * 3000)
    out = _curl(curl, "-w", "\n%{http_code}", server.url + "/api/generate", "-d",
                json.dumps({"model": "smollm2", "prompt": long_prompt, "stream": False}))
    body, code = out.rsplit("\n", 1)
    assert code == "400" and "context" in json.loads(body)["error"]
    for options, word in (({"num_predict": "many"}, "num_predict"), ({"temperature": True}, "temperature"),
                          ({"stop": [1, 2]}, "stop"), ({"top_k": 1.5}, "top_k")):
        out = _curl(curl, "-w", "\n%{http_code}", server.url + "/api/generate", "-d",
                    json.dumps({"model": "smollm2", "prompt": "hi", "options": options}))
        body, code = out.rsplit("\n", 1)
        assert code == "400" and word in json.loads(body)["error"], body
    assert _curl(curl, server.url + "/").startswith("FerrousForge is running")
    assert json.loads(_curl(curl, server.url + "/api/version"))["version"]


def test_keep_alive_durations(oc: ollama.Client) -> None:
    oc.generate(model="tiny", prompt="", keep_alive="1s")
    assert "tiny:latest" in {m.model for m in oc.ps().models}
    time.sleep(2.5)  # the reaper looks twice a second
    assert "tiny:latest" not in {m.model for m in oc.ps().models}
    oc.generate(model="tiny", prompt="", keep_alive=-1)
    (forever,) = [m for m in oc.ps().models if m.model == "tiny:latest"]
    assert forever.expires_at is not None and forever.expires_at.year == 9999
    oc.generate(model="tiny", prompt="", keep_alive=0)
