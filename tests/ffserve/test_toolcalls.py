"""Tool calls read back from model text, whole and streamed; forced-call grammars; schema checks."""

from __future__ import annotations

import json

import pytest

from ffruntime.constraints import format_grammar, tool_call_grammar, tool_call_schema
from ffruntime.runtime import RequestRejected
from ffserve.toolcalls import StreamParser, parse

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


def test_forced_call_grammar_and_schema() -> None:
    schema = tool_call_schema([WEATHER])
    assert schema["properties"]["name"] == {"const": "get_weather"}  # type: ignore[index]
    grammar = tool_call_grammar([WEATHER, {**WEATHER, "function": {**WEATHER["function"], "name": "other"}}])
    assert '"\\"get_weather\\""' in grammar and '"\\"other\\""' in grammar
    with pytest.raises(RequestRejected, match="nope"):
        tool_call_grammar([WEATHER], "nope")


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, ["$ref", "/properties/a"]),
        ({"$ref": "https://example.com/schema.json"}, ["$ref", "example.com"]),
        ({"type": 5}, ["type"]),
        ({"type": "string", "pattern": "abc"}, ["grammar", "Pattern"]),
    ],
)
def test_bad_schemas_are_rejected_naming_the_part(schema: dict[str, object], words: list[str]) -> None:
    with pytest.raises(RequestRejected) as err:
        format_grammar(schema)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert str(err.value).startswith("format")


def test_good_schema_with_local_ref_converts() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"$ref": "#/$defs/n"}},
        "$defs": {"n": {"type": "integer"}},
    }
    assert "root ::=" in (format_grammar(schema) or "")
    assert "root" in (format_grammar("json") or "")
    json.dumps(schema)
