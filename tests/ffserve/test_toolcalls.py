"""Tool calls read back from model text, whole and streamed; tool_choice as a typed constraint."""

from __future__ import annotations

import pytest

from ffruntime.runtime import ForcedToolCall
from ffserve.errors import BadRequest
from ffserve.toolcalls import StreamParser, parse, plan
from ffserve.wire.tools import Tool

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>',
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '```json\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n```',
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}',  # stopped at the closing tag
    ],
)
def test_calls_are_parsed(text: str) -> None:
    content, calls = parse(text, ["get_weather"])
    assert content == "" and len(calls) == 1
    assert calls[0].name == "get_weather" and calls[0].arguments == {"city": "Paris"}
    assert calls[0].id.startswith("call_")


@pytest.mark.parametrize(
    "text",
    [
        "The weather is fine.",
        '{"name": "other_tool", "arguments": {}}',
        '{"city": "Paris"}',
        "<tool_call>not json</tool_call>",
    ],
)
def test_other_text_stays_content(text: str) -> None:
    assert parse(text, ["get_weather"]) == (text, [])


def test_stream_passes_plain_text_at_once_and_holds_calls() -> None:
    p = StreamParser(["get_weather"])
    assert p.feed("The ") == "The "
    assert p.feed("answer") == "answer"
    assert p.finish() == ("", [])
    p = StreamParser(["get_weather"])
    pieces = [
        p.feed(x) for x in ["<tool", "_call>", '{"name": "get_weather", ', '"arguments": {}}', "</tool_call>"]
    ]
    assert pieces == ["", "", "", "", ""]
    content, calls = p.finish()
    assert content == "" and [c.name for c in calls] == ["get_weather"]
    p = StreamParser(["get_weather"])
    assert p.feed("Let me check. <tool_") == "Let me check. "
    p.feed('call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>')
    assert p.finish()[1][0].arguments == {"city": "Oslo"}


def test_plan_turns_tool_choice_into_a_constraint() -> None:
    tools = [Tool.model_validate(WEATHER)]
    specs = [t.spec() for t in tools]
    assert plan(tools, None) == (specs, None)
    assert plan(tools, "auto") == (specs, None)
    assert plan(tools, "none") == (None, None)
    assert plan(None, None) == (None, None)
    assert plan(tools, "required") == (specs, ForcedToolCall(tuple(specs), None))
    assert plan(tools, "get_weather") == (specs, ForcedToolCall(tuple(specs), "get_weather"))
    with pytest.raises(BadRequest, match="not one of the tools"):
        plan(tools, "nope")
    with pytest.raises(BadRequest, match="tool_choice needs tools"):
        plan(None, "required")
