"""Issue 11 with the batching llama.cpp engine through a real ``ff serve``: full-length answers,
``num_ctx`` per request and from the Modelfile, tool calling round trips (openai and ollama clients,
streaming and not), forced calls that validate against the tool's schema, and logprobs."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import ollama
import openai
import pytest

from registry.store import Store
from tests.ffserve.serve_testkit import Server, start_server
from tests.models import add_model

STORY = "Write a long story about a dragon."
LONG = "Write a story about a dragon in about 200 words."
SAMPLED: dict[str, float | int] = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 10}  # ends itself
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": WEATHER_PARAMS,
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}
ASK = "What is the weather in Paris right now? Use the tool."
RESULT = json.dumps({"city": "Paris", "temperature": 18, "unit": "celsius", "sky": "sunny"})


# --- lengths ------------------------------------------------------------------------------------------
def test_long_answers_without_a_limit(oc: ollama.Client, ai: openai.OpenAI) -> None:
    """No limit asked: every API generates until the model stops, far past llama-cpp-python's 16.

    Sampled as Ollama's defaults do (greedy, this 135M model loops until the context is full)."""
    msgs = [{"role": "user", "content": LONG}]
    g = oc.generate(model="smollm2", prompt=LONG, options=SAMPLED)
    assert g.done_reason == "stop" and (g.eval_count or 0) > 100, (g.eval_count, g.response)
    c = oc.chat(model="smollm2", messages=msgs, options=SAMPLED)
    assert c.done_reason == "stop" and (c.eval_count or 0) > 100
    extra = {"top_k": SAMPLED["top_k"]}
    kw = {"temperature": SAMPLED["temperature"], "top_p": SAMPLED["top_p"], "seed": SAMPLED["seed"]}
    r = ai.chat.completions.create(model="smollm2", messages=msgs, extra_body=extra, **kw)  # type: ignore[arg-type]
    assert r.choices[0].finish_reason == "stop" and r.usage and r.usage.completion_tokens > 100
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    system += "<|im_end|>\n"
    chatml = f"{system}<|im_start|>user\n{LONG}<|im_end|>\n<|im_start|>assistant\n"  # as the chat template
    p = ai.completions.create(model="smollm2", prompt=chatml, extra_body=extra, **kw)  # type: ignore[arg-type]
    assert p.choices[0].finish_reason == "stop" and p.usage and p.usage.completion_tokens > 100
    streamed = list(
        ai.chat.completions.create(
            model="smollm2",
            messages=msgs,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
            extra_body=extra,
            **kw,  # type: ignore[arg-type]
        )
    )
    assert streamed[-1].usage and streamed[-1].usage.completion_tokens > 100
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "stop"


def test_greedy_story_runs_until_the_context_is_full(server: Server) -> None:
    """ "length" only when the context is full (here a per-request num_ctx of 384), never at 16."""
    r = httpx.post(
        server.url + "/api/generate",
        timeout=300,
        json={"model": "smollm2", "prompt": STORY, "stream": False, "options": {"num_ctx": 384}},
    )
    body = r.json()
    assert r.status_code == 200 and body["eval_count"] > 300, body
    if body["done_reason"] == "length":
        assert body["prompt_eval_count"] + body["eval_count"] >= 383


def test_limits_are_honoured(oc: ollama.Client, ai: openai.OpenAI) -> None:
    r = ai.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": STORY}], max_completion_tokens=40
    )
    assert r.choices[0].finish_reason == "length" and r.usage and r.usage.completion_tokens == 40
    g = oc.generate(model="smollm2", prompt=STORY, options={"num_predict": 25})
    assert g.done_reason == "length" and g.eval_count == 25


def test_num_ctx_per_request(server: Server) -> None:
    """A request's num_ctx is its context: the answer stops with "length" when it is full."""
    r = httpx.post(
        server.url + "/api/generate",
        timeout=120,
        json={"model": "smollm2", "prompt": STORY, "stream": False, "options": {"num_ctx": 96}},
    )
    body = r.json()
    assert r.status_code == 200 and body["done_reason"] == "length", body
    assert body["prompt_eval_count"] + body["eval_count"] <= 96
    long_prompt = " ".join(["word"] * 200)
    r = httpx.post(
        server.url + "/api/generate",
        timeout=120,
        json={"model": "smollm2", "prompt": long_prompt, "stream": False, "options": {"num_ctx": 64}},
    )
    assert r.status_code == 400 and "64" in r.json()["error"]


@pytest.fixture(scope="module")
def small_ctx_server(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("ctxhome")
    add_model(
        Store(home / "store"),
        "smallctx:latest",
        {"q4_1": smollm2_gguf},
        params={"num_ctx": 64, "temperature": 0.0, "stop": ["<|im_end|>"]},
    )
    with start_server(home, tmp_path_factory.mktemp("ctxlogs"), FF_QUANTIZE="q4_1") as s:
        yield s


def test_openai_requests_get_the_modelfile_num_ctx(small_ctx_server: Server) -> None:
    client = openai.OpenAI(base_url=small_ctx_server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="64"):
        client.chat.completions.create(
            model="smallctx", messages=[{"role": "user", "content": "word " * 100}]
        )
    r = client.chat.completions.create(model="smallctx", messages=[{"role": "user", "content": STORY}])
    assert r.choices[0].finish_reason == "length" and r.usage and r.usage.total_tokens <= 64


# --- tools --------------------------------------------------------------------------------------------
def _arguments(call: object) -> dict[str, object]:
    args = json.loads(call.function.arguments)  # type: ignore[attr-defined]
    jsonschema.validate(args, WEATHER_PARAMS)
    return args  # type: ignore[no-any-return]


def test_openai_tool_round_trip(ai: openai.OpenAI) -> None:
    messages: list[dict[str, object]] = [{"role": "user", "content": ASK}]
    first = ai.chat.completions.create(
        model="smollm2",
        messages=messages,
        tools=[WEATHER],  # type: ignore[arg-type,list-item]
        tool_choice="required",
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id  # type: ignore[union-attr]
    assert _arguments(call)["unit"] in ("celsius", "fahrenheit")
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": RESULT},
    ]
    final = ai.chat.completions.create(model="smollm2", messages=messages, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls
    assert (final.choices[0].message.content or "").strip(), final


def test_openai_tool_round_trip_streaming(ai: openai.OpenAI) -> None:
    messages: list[dict[str, object]] = [{"role": "user", "content": ASK}]
    chunks = list(
        ai.chat.completions.create(
            model="smollm2",
            messages=messages,
            tools=[WEATHER],  # type: ignore[arg-type,list-item]
            tool_choice="required",
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert len(calls) == 1 and calls[0].function and calls[0].function.name == "get_weather" and calls[0].id
    _arguments(calls[0])
    assistant = {
        "role": "assistant",
        "tool_calls": [
            {
                "id": calls[0].id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": calls[0].function.arguments},
            }
        ],
    }
    messages += [assistant, {"role": "tool", "tool_call_id": calls[0].id, "content": RESULT}]
    text = "".join(
        c.choices[0].delta.content or ""
        for c in ai.chat.completions.create(model="smollm2", messages=messages, tools=[WEATHER], stream=True)
        if c.choices
    )  # type: ignore[arg-type,list-item]
    assert text.strip()


def test_tool_choice_required_always_validates(ai: openai.OpenAI) -> None:
    prompts = [
        "Weather in Oslo?",
        "Is it raining in Lima?",
        "Tell me a joke.",
        "hello",
        "Tokyo, in fahrenheit",
    ]
    for i, prompt in enumerate(prompts):
        r = ai.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": prompt}],
            tools=[WEATHER],
            tool_choice="required",
            temperature=1.0,
            seed=i,
        )  # type: ignore[list-item]
        calls = r.choices[0].message.tool_calls or []
        assert len(calls) == 1 and calls[0].function.name == "get_weather", r  # type: ignore[union-attr]
        _arguments(calls[0])


def test_named_tool_choice_calls_that_tool(ai: openai.OpenAI) -> None:
    r = ai.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": ASK}],
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = r.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_time"]  # type: ignore[union-attr]
    assert "city" in json.loads(calls[0].function.arguments)  # type: ignore[union-attr]


def test_tool_choice_none_answers_in_text(ai: openai.OpenAI) -> None:
    r = ai.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": ASK}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_tokens=60,
    )
    assert r.choices[0].finish_reason in ("stop", "length") and not r.choices[0].message.tool_calls
    assert (r.choices[0].message.content or "").strip()


def test_ollama_tool_round_trip(oc: ollama.Client) -> None:
    """The ollama client's own tool flow: a Python function as the tool, ``message.tool_calls`` back,
    a ``tool`` message with the result, a final answer. Ollama's API has no tool_choice, and this
    135M model never calls a tool unasked, so the first turn forces one with ff's
    ``options.tool_choice`` (the one field every Ollama client passes through)."""

    def get_weather(city: str, unit: str) -> str:
        """The current weather in a city.

        Args:
          city: the city
          unit: celsius or fahrenheit
        """
        return RESULT

    messages: list[object] = [{"role": "user", "content": ASK}]
    first = oc.chat(
        model="smollm2",
        messages=messages,
        tools=[get_weather],  # type: ignore[arg-type]
        options={"tool_choice": "required"},
    )
    calls = first.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"], first.message
    args = dict(calls[0].function.arguments)
    assert isinstance(args.get("city"), str) and isinstance(args.get("unit"), str)
    messages += [first.message, {"role": "tool", "tool_name": "get_weather", "content": get_weather(**args)}]
    final = oc.chat(model="smollm2", messages=messages, tools=[get_weather], options={"num_predict": 200})  # type: ignore[arg-type]
    assert (final.message.content or "").strip() and not final.message.tool_calls, final.message
    parts = list(
        oc.chat(
            model="smollm2",
            messages=messages[:1],
            tools=[get_weather],
            stream=True,  # type: ignore[arg-type]
            options={"tool_choice": "get_weather"},
        )
    )
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert parts[-1].done and [c.function.name for c in streamed] == ["get_weather"]


# --- logprobs -----------------------------------------------------------------------------------------
def _check_top(entries: list[object], k: int) -> None:
    assert entries
    for e in entries:
        assert e.logprob <= 0  # type: ignore[attr-defined]
        top = [t.logprob for t in e.top_logprobs]  # type: ignore[attr-defined]
        assert len(top) == k and top == sorted(top, reverse=True) and all(t <= 0 for t in top)
        assert e.logprob <= top[0] + 1e-6  # type: ignore[attr-defined]


def test_openai_chat_logprobs(ai: openai.OpenAI) -> None:
    r = ai.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello."}],
        logprobs=True,
        top_logprobs=3,
        max_tokens=12,
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    _check_top(content, 3)  # type: ignore[arg-type]
    assert "".join(t.token for t in content) == r.choices[0].message.content  # type: ignore[union-attr]
    for t in content:  # type: ignore[union-attr]
        assert t.token == t.top_logprobs[0].token  # greedy (Modelfile temperature 0): the likeliest token
    chunks = list(
        ai.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Say hello."}],
            logprobs=True,
            top_logprobs=2,
            max_tokens=12,
            stream=True,
        )
    )
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    _check_top(streamed, 2)  # type: ignore[arg-type]
    assert len(streamed) == 12 and [t.token for t in streamed] == [t.token for t in content][:12]


def test_openai_completion_logprobs(ai: openai.OpenAI) -> None:
    r = ai.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=5, logprobs=2)
    lp = r.choices[0].logprobs
    assert lp and lp.tokens and lp.token_logprobs and lp.top_logprobs and len(lp.tokens) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(x <= 0 for x in lp.token_logprobs) and all(len(t) <= 2 for t in lp.top_logprobs)
    assert math.fsum(lp.token_logprobs) <= 0


def test_ollama_logprobs(oc: ollama.Client) -> None:
    r = oc.generate(
        model="smollm2", prompt="Say hello.", logprobs=True, top_logprobs=2, options={"num_predict": 8}
    )
    _check_top(list(r.logprobs or []), 2)
    assert "".join(t.token for t in r.logprobs or []) == r.response
    c = oc.chat(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello."}],
        logprobs=True,
        options={"num_predict": 8},
    )
    assert c.logprobs and all(t.logprob <= 0 for t in c.logprobs)


# --- embeddings from token ids ------------------------------------------------------------------------
def test_openai_token_array_embeddings(ai: openai.OpenAI, server: Server) -> None:
    g = httpx.post(
        server.url + "/api/generate",
        timeout=60,
        json={
            "model": "smollm2",
            "prompt": "The cat sits.",
            "raw": True,
            "stream": False,
            "options": {"num_predict": 1},
        },
    )
    ids = g.json()["context"][:-1]  # the prompt's tokens (the last one is the generated token)
    by_text = ai.embeddings.create(model="smollm2", input="The cat sits.").data[0].embedding
    by_ids = ai.embeddings.create(model="smollm2", input=ids).data[0].embedding
    two = ai.embeddings.create(model="smollm2", input=[ids, ids[1:]])
    assert len(by_ids) == 576 and len(two.data) == 2
    assert sum(a * b for a, b in zip(by_text, by_ids, strict=True)) > 0.999


# --- engine statistics in /metrics --------------------------------------------------------------------
def test_engine_stats_are_in_metrics(server: Server, oc: ollama.Client) -> None:
    before = server.metric("ff:runtime_steps_total", model_name="smollm2:latest")
    system = "You are a helpful assistant who answers in one short sentence. " * 8
    for _ in range(2):  # the second request reuses the first one's prompt prefix
        oc.chat(
            model="smollm2",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": "Say hi."}],
            options={"num_predict": 4},
        )
    assert server.metric("ff:runtime_steps_total", model_name="smollm2:latest") >= before + 8
    assert server.metric("ff:runtime_batch_sequences_total", model_name="smollm2:latest") >= 8
    assert server.metric("ff:runtime_prefix_hits_total", model_name="smollm2:latest") >= 1
    assert server.metric("ff:runtime_slots", model_name="smollm2:latest") >= 1
