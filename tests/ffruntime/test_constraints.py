"""ffruntime.constraints: wire values checked into the typed constraint; the constraint compiled to GBNF."""

from __future__ import annotations

import pytest

from ffruntime.constraints import (
    forced_tool_call,
    format_constraint,
    gbnf,
    json_grammar,
    json_schema,
    tool_call_schema,
)
from ffruntime.runtime import (
    ForcedToolCall,
    FreeText,
    GenerationRequest,
    JsonObject,
    JsonSchema,
    RequestRejected,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
OTHER = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_a_request_is_free_text_unless_asked() -> None:
    assert GenerationRequest().constraint == FreeText()
    assert gbnf(FreeText()) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, FreeText()), ("", FreeText()), ("json", JsonObject()), (CITY, JsonSchema(CITY, "format"))],
)
def test_format_values_become_typed_constraints(value: object, expected: object) -> None:
    assert format_constraint(value) == expected


def test_an_empty_schema_is_a_schema_not_free_text() -> None:
    assert format_constraint({}) == JsonSchema({}, "format")


@pytest.mark.parametrize("value", ["xml", 3, ["json"]])
def test_other_format_values_are_rejected(value: object) -> None:
    with pytest.raises(RequestRejected, match='format: must be "json" or a JSON schema object'):
        format_constraint(value)


def test_the_source_field_is_kept_for_errors() -> None:
    c = json_schema(CITY, "response_format.json_schema.schema")
    assert c == JsonSchema(CITY, "response_format.json_schema.schema")


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, ["$ref", "/properties/a"]),
        ({"$ref": "https://example.com/schema.json"}, ["$ref", "example.com"]),
        ({"type": 5}, ["type"]),
    ],
)
def test_bad_schemas_are_rejected_when_checked(schema: dict[str, object], words: list[str]) -> None:
    with pytest.raises(RequestRejected) as err:
        format_constraint(schema)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert str(err.value).startswith("format")


def test_a_schema_the_converter_cannot_use_is_rejected_when_compiled() -> None:
    c = json_schema({"type": "string", "pattern": "abc"}, "response_format.json_schema.schema")
    with pytest.raises(RequestRejected) as err:
        gbnf(c)
    message = str(err.value)
    assert message.startswith("response_format.json_schema.schema") and "grammar" in message
    assert "Pattern" in message


def test_json_and_schemas_compile_to_gbnf() -> None:
    assert gbnf(JsonObject()) == json_grammar() and "root" in json_grammar()
    schema = {
        "type": "object",
        "properties": {"n": {"$ref": "#/$defs/n"}},
        "$defs": {"n": {"type": "integer"}},
    }
    grammar = gbnf(json_schema(schema)) or ""
    assert "root ::=" in grammar and "integer" in grammar
    assert gbnf(json_schema(CITY)) != gbnf(json_schema(schema))


def test_forced_call_schema_and_grammar() -> None:
    schema = tool_call_schema([WEATHER])
    assert schema["properties"]["name"] == {"const": "get_weather"}  # type: ignore[index]
    named_schema = tool_call_schema([WEATHER, OTHER], "other")
    assert named_schema["properties"]["name"] == {"const": "other"}  # type: ignore[index]
    any_call = forced_tool_call([WEATHER, OTHER])
    assert any_call == ForcedToolCall((WEATHER, OTHER), None)
    grammar = gbnf(any_call) or ""
    assert '"\\"get_weather\\""' in grammar and '"\\"other\\""' in grammar
    named = gbnf(forced_tool_call([WEATHER, OTHER], "other")) or ""
    assert '"\\"other\\""' in named and "get_weather" not in named
    with pytest.raises(RequestRejected, match="nope"):
        forced_tool_call([WEATHER], "nope")


def test_a_tool_with_a_bad_parameter_schema_is_rejected_naming_tools() -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}
    with pytest.raises(RequestRejected, match=r"^tools: not a valid JSON schema"):
        forced_tool_call([bad])
