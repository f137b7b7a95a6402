"""ffruntime.constraints: wire values checked into the typed constraint, compiled by llguidance."""

from __future__ import annotations

import json

import pytest

from ffruntime.constraints import (
    FORMAT_MAX_LENGTH,
    PATTERN_MAX_LENGTH,
    bounded,
    constraint_schema,
    forced_tool_call,
    format_constraint,
    guidance_grammar,
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
    UnsupportedSchema,
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
    assert constraint_schema(FreeText()) is None and guidance_grammar(FreeText()) is None


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


@pytest.mark.parametrize(
    ("schema", "feature"),
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "if, then"),
        ({"type": "string", "format": "credit-card"}, "format 'credit-card'"),
        ({"type": "string", "pattern": "(?=a)b"}, "the pattern '(?=a)b'"),
    ],
)
def test_a_feature_the_engine_cannot_enforce_is_named(schema: dict[str, object], feature: str) -> None:
    c = json_schema(schema, "response_format.json_schema.schema")  # a valid JSON schema: checked, kept
    with pytest.raises(UnsupportedSchema) as err:
        guidance_grammar(c)
    assert err.value.feature == feature
    assert isinstance(err.value, RequestRejected)  # a 400 through ffserve.errors' map
    assert str(err.value).startswith(f"response_format.json_schema.schema: the JSON schema uses {feature}")


def test_json_and_schemas_compile_to_grammars() -> None:
    assert constraint_schema(JsonObject()) == {"type": "object"}
    schema = {
        "type": "object",
        "properties": {"n": {"$ref": "#/$defs/n"}, "day": {"type": "string", "format": "date"}},
        "$defs": {"n": {"type": "integer"}},
    }
    grammar = json.loads(guidance_grammar(json_schema(schema)) or "")
    (only,) = grammar["grammars"]
    assert only["json_schema"]["properties"] == schema["properties"]
    assert only["json_schema"]["x-guidance"]["whitespace_flexible"] is False  # no endless whitespace
    assert guidance_grammar(JsonObject()) != guidance_grammar(json_schema(CITY))


def test_times_are_bounded_never_narrowed_otherwise() -> None:
    schema = {
        "type": "object",
        "properties": {
            "at": {"type": "string", "format": "date-time"},
            "when": {"type": "string", "format": "time", "maxLength": 10},
            "format": {"type": "string", "enum": ["time"]},  # a property named format: not a format
        },
        "examples": [{"format": "time"}],
    }
    out = bounded(schema)
    assert out["properties"]["at"] == {"type": "string", "format": "date-time", "maxLength": 35}  # type: ignore[index]
    assert out["properties"]["when"]["maxLength"] == 10  # type: ignore[index]
    assert out["properties"]["format"] == schema["properties"]["format"]  # type: ignore[index]
    assert out["examples"] == schema["examples"]  # type: ignore[index]
    longest = "2024-12-31T23:59:60.123456789+01:00"
    assert len(longest) == FORMAT_MAX_LENGTH["date-time"] and len(longest[11:]) == FORMAT_MAX_LENGTH["time"]


def test_pattern_strings_are_bounded_and_still_match() -> None:
    """A pattern with an unbounded repeat gets PATTERN_MAX_LENGTH; a schema's own maxLength stays, and a
    property named ``pattern`` is not a pattern."""
    schema = {
        "type": "object",
        "properties": {
            "version": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$"},
            "code": {"type": "string", "pattern": "^[A-Z]+$", "maxLength": 8},
            "pattern": {"type": "string"},
        },
    }
    out = bounded(schema)
    props = out["properties"]  # type: ignore[index]
    assert props["version"]["maxLength"] == PATTERN_MAX_LENGTH
    assert props["code"]["maxLength"] == 8
    assert props["pattern"] == {"type": "string"}
    assert "maxLength" not in out  # type: ignore[operator]
    assert guidance_grammar(json_schema(out)) is not None  # type: ignore[arg-type]  # llguidance takes both


def test_forced_call_schema_and_grammar() -> None:
    schema = tool_call_schema([WEATHER])
    assert schema["properties"]["name"] == {"const": "get_weather"}  # type: ignore[index]
    named_schema = tool_call_schema([WEATHER, OTHER], "other")
    assert named_schema["properties"]["name"] == {"const": "other"}  # type: ignore[index]
    any_call = forced_tool_call([WEATHER, OTHER])
    assert any_call == ForcedToolCall((WEATHER, OTHER), None)
    assert constraint_schema(any_call) == tool_call_schema([WEATHER, OTHER])
    both = guidance_grammar(any_call) or ""
    assert "get_weather" in both and "other" in both
    named = guidance_grammar(forced_tool_call([WEATHER, OTHER], "other")) or ""
    assert '"other"' in named and "get_weather" not in named
    with pytest.raises(RequestRejected, match="nope"):
        forced_tool_call([WEATHER], "nope")


def test_a_tool_with_a_bad_parameter_schema_is_rejected_naming_tools() -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}
    with pytest.raises(RequestRejected, match=r"^tools: not a valid JSON schema"):
        forced_tool_call([bad])
