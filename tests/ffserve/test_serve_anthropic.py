"""The unmodified ``anthropic`` client against a real ``ff serve``: Anthropic's Messages API."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tests.ffserve.serve_testkit import Server

QUESTION = "What is the capital of France? Answer in one sentence."
WEATHER: anthropic.types.ToolParam = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def ac(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def test_messages_create_says_paris(ac: anthropic.Anthropic) -> None:
    m = ac.messages.create(model="smollm2", max_tokens=64, messages=[{"role": "user", "content": QUESTION}])
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.content[0].type == "text" and "Paris" in m.content[0].text, m.content
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.input_tokens > 10 and m.usage.output_tokens > 0


def test_messages_stream(ac: anthropic.Anthropic) -> None:
    kinds: list[str] = []
    with ac.messages.stream(
        model="smollm2", max_tokens=64, system=[{"type": "text", "text": "You are a geography teacher."}],
        messages=[{"role": "user", "content": QUESTION}],
    ) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    text = "".join(b.text for b in final.content if b.type == "text")
    assert "Paris" in text, text
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "message_delta" in kinds
    assert {"content_block_start", "content_block_delta", "content_block_stop", "text"} <= set(kinds)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert final.usage.input_tokens > 10


def test_multi_turn_stop_sequences_and_max_tokens(ac: anthropic.Anthropic) -> None:
    turns: list[anthropic.types.MessageParam] = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": QUESTION},
    ]
    stopped = ac.messages.create(  # this SDK has no sampling arguments; older ones and other clients do
        model="smollm2", max_tokens=64, messages=turns, stop_sequences=["Paris"],
        extra_body={"temperature": 0.0, "top_k": 1, "top_p": 1.0},
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "Paris"
    assert stopped.content[0].type == "text" and "Paris" not in stopped.content[0].text
    short = ac.messages.create(model="smollm2", max_tokens=3, messages=turns)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_forced_tool_use_round_trip(ac: anthropic.Anthropic) -> None:
    ask: list[anthropic.types.MessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]
    m = ac.messages.create(
        model="smollm2", max_tokens=64, messages=ask, tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert m.stop_reason == "tool_use"
    use = [b for b in m.content if b.type == "tool_use"]
    assert len(use) == 1 and use[0].name == "get_weather" and use[0].id.startswith("toolu_")
    assert isinstance(use[0].input, dict) and isinstance(use[0].input.get("city"), str)
    result: anthropic.types.ToolResultBlockParam = {
        "type": "tool_result", "tool_use_id": use[0].id, "content": "18 degrees and sunny",
    }
    follow = ac.messages.create(
        model="smollm2", max_tokens=48, tools=[WEATHER],
        messages=[*ask, {"role": "assistant", "content": m.content}, {"role": "user", "content": [result]}],
    )
    assert follow.stop_reason in ("end_turn", "max_tokens")
    assert follow.content and follow.content[0].type == "text" and follow.content[0].text.strip()
    streamed = ac.messages.create(
        model="smollm2", max_tokens=64, messages=ask, tools=[WEATHER],
        tool_choice={"type": "any"}, stream=True,
    )
    events = list(streamed)
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert any(d.type == "input_json_delta" for d in deltas)
    stop = [e for e in events if e.type == "message_delta"]
    assert stop and stop[0].delta.stop_reason == "tool_use"


def test_structured_output(ac: anthropic.Anthropic) -> None:
    city = {
        "type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"], "additionalProperties": False,
    }
    m = ac.messages.create(
        model="smollm2", max_tokens=60, output_config={"format": {"type": "json_schema", "schema": city}},
        messages=[{"role": "user", "content": "Which city is the capital of France? Answer in JSON."}],
    )
    assert m.stop_reason == "end_turn" and m.content[0].type == "text"
    value = json.loads(m.content[0].text)
    assert set(value) == {"city", "country"} and all(isinstance(v, str) for v in value.values())


def test_count_tokens(ac: anthropic.Anthropic) -> None:
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": QUESTION}]
    n = ac.messages.count_tokens(model="smollm2", messages=messages)
    m = ac.messages.create(model="smollm2", max_tokens=2, messages=messages)
    assert n.input_tokens == m.usage.input_tokens > 10
    turns: list[anthropic.types.MessageParam] = [
        *messages, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Spain?"}
    ]
    more = ac.messages.count_tokens(model="smollm2", messages=turns)
    assert more.input_tokens > n.input_tokens + 5
    # SmolLM2's template puts its own system prompt in when there is none: a short one is fewer tokens
    own = ac.messages.count_tokens(model="smollm2", messages=messages, system="Be brief.")
    assert 10 < own.input_tokens < n.input_tokens


def test_errors_in_anthropics_shape(ac: anthropic.Anthropic, server: Server) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        ac.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    body = missing.value.body
    assert isinstance(body, dict) and body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == "not_found_error" and "no-such-model" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as bad:
        ac.messages.create(model="smollm2", max_tokens=0, messages=[{"role": "user", "content": "hi"}])
    err = bad.value.body
    assert isinstance(err, dict) and err["type"] == "error"
    assert err["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in err["error"]["message"]
    r = httpx.post(server.url + "/v1/messages", content=b"{not json")
    assert r.status_code == 400 and r.json()["type"] == "error"
    for content in ([], [{"type": "image", "source": {}}]):
        r = httpx.post(server.url + "/v1/messages", json={
            "model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": content}]})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("messages.0.content")
    with pytest.raises(anthropic.BadRequestError) as tool:
        ac.messages.create(
            model="smollm2", max_tokens=8, messages=[{"role": "user", "content": "hi"}],
            tools=[WEATHER], tool_choice={"type": "tool", "name": "other"},
        )
    assert isinstance(tool.value.body, dict) and "not one of the tools" in tool.value.body["error"]["message"]
