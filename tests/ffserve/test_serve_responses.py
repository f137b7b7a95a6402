"""The unmodified ``openai`` client's ``responses.create`` against a real ``ff serve`` (OpenAI's
Responses API, stateless)."""

from __future__ import annotations

import json

import openai
import pytest
from openai.types.responses import FunctionToolParam, ResponseInputItemParam

QUESTION = "What is the capital of France? Answer in one sentence."
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}
WEATHER: FunctionToolParam = {
    "type": "function",
    "strict": False,
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_responses_create_says_paris(ai: openai.OpenAI) -> None:
    r = ai.responses.create(model="smollm2", input=QUESTION)
    assert "Paris" in r.output_text, r.output_text
    assert r.status == "completed" and r.object == "response" and r.id.startswith("resp_")
    assert r.usage is not None and r.usage.input_tokens > 10 and r.usage.output_tokens > 0
    items = ai.responses.create(
        model="smollm2", instructions="You are a geography teacher.", max_output_tokens=4,
        input=[{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}],
    )
    assert items.status == "incomplete" and items.incomplete_details is not None
    assert items.incomplete_details.reason == "max_output_tokens"
    assert items.usage and items.usage.output_tokens == 4


def test_responses_stream(ai: openai.OpenAI) -> None:
    events = list(ai.responses.create(model="smollm2", input=QUESTION, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1]
    assert done.type == "response.completed" and done.response.output_text == text and "Paris" in text


def test_responses_json_schema_format(ai: openai.OpenAI) -> None:
    r = ai.responses.create(
        model="smollm2", input="Which city is the capital of France? Answer in JSON.", max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}},
    )
    assert r.status == "completed", r.output_text
    value = json.loads(r.output_text)
    assert set(value) == {"city", "country"} and all(isinstance(v, str) for v in value.values())


def test_responses_function_call_round_trip(ai: openai.OpenAI) -> None:
    ask: list[ResponseInputItemParam] = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = ai.responses.create(
        model="smollm2", input=ask, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}
    )
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments).get("city"), str)
    follow = ai.responses.create(
        model="smollm2", tools=[WEATHER], max_output_tokens=40,
        input=[*ask, calls[0].model_dump(), {  # type: ignore[list-item]  # the SDK's output item, sent back
            "type": "function_call_output", "call_id": calls[0].call_id, "output": "18 degrees and sunny"}],
    )
    assert follow.output_text.strip() and follow.output[0].type == "message"


def test_previous_response_id_is_a_clear_400(ai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ai.responses.create(model="smollm2", input="hi", previous_response_id="resp_123")
    assert "stateless" in err.value.message and "input items" in err.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        ai.responses.create(model="smollm2", input=[])
    assert "at least one item" in empty.value.message
    with pytest.raises(openai.BadRequestError) as image:
        ai.responses.create(model="smollm2", input=[
            {"role": "user", "content": [{"type": "input_image", "image_url": "data:,", "detail": "auto"}]}])
    assert "input_image parts are not supported" in image.value.message
