"""The typed Ollama options: null is unset, wrong types and ranges are named, unknown keys ignored."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from ffserve.wire.ollama import ChatRequest, GenerateRequest
from ffserve.wire.openai import ChatCompletionRequest
from ffserve.wire.options import Options


def _error(**options: object) -> str:
    with pytest.raises(ValidationError) as err:
        GenerateRequest.model_validate({"model": "m", "options": options}, strict=True)  # as parse_body does
    return str(err.value)


def test_every_ollama_client_option_is_known() -> None:
    import ollama

    assert set(ollama.Options.model_fields) <= set(Options.model_fields)


def test_the_fields_are_the_options_table_and_tool_choice() -> None:
    from ffruntime.options import OPTIONS

    assert list(Options.model_fields) == ["tool_choice", *OPTIONS]
    schema = Options.model_json_schema()["properties"]
    assert schema["num_ctx"]["anyOf"][0] == {"maximum": 1 << 24, "minimum": 1, "type": "integer"}
    assert schema["top_p"]["anyOf"][0] == {"maximum": 1, "minimum": 0, "type": "number"}


def test_null_means_unset_and_only_set_options_reach_the_runtime() -> None:
    body = GenerateRequest.model_validate(
        {"model": "m", "options": {"mirostat": None, "temperature": 0.2, "num_predict": None, "stop": "END"}}
    )
    assert body.options.params() == {"temperature": 0.2, "stop": ["END"]}
    assert GenerateRequest.model_validate({"model": "m", "options": None}).options.params() == {}
    assert GenerateRequest.model_validate({"model": "m"}).options.params() == {}


def test_types_are_checked_not_coerced() -> None:
    assert "num_predict" in _error(num_predict="many")
    assert "num_predict" in _error(num_predict="12")  # a string is not a number, even when it reads as one
    assert "temperature" in _error(temperature=True)
    assert "top_k" in _error(top_k=1.5)
    assert "stop" in _error(stop=[1, 2])
    assert "use_mmap" in _error(use_mmap=1)
    ok = Options.model_validate({"top_k": 40.0, "use_mmap": False, "temperature": 1}, strict=True)
    assert ok.params() == {"top_k": 40, "use_mmap": False, "temperature": 1.0}


def test_ranges_are_checked() -> None:
    assert "top_p" in _error(top_p=1.5)
    assert "temperature" in _error(temperature=-1)
    assert "mirostat" in _error(mirostat=3)
    assert "num_ctx" in _error(num_ctx=0)
    assert "num_predict" in _error(num_predict=-3)
    assert "repeat_penalty" in _error(repeat_penalty=float("inf"))
    ok = {"num_predict": -1, "num_ctx": 8192, "seed": -1, "mirostat": 2, "repeat_last_n": -1}
    assert Options.model_validate(ok).params() == ok


def test_unknown_options_are_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ffserve"):
        body = ChatRequest.model_validate({"model": "m", "options": {"no_such_option": 1, "seed": 3}})
    assert body.options.params() == {"seed": 3}
    assert "no_such_option" in caplog.text


def test_openai_fields_map_to_the_same_options() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 7,
            "temperature": 0.5,
            "stop": "x",
            "seed": 1,
        }
    )
    assert body.options(body.max_completion_tokens).params() == {
        "num_predict": 7,
        "temperature": 0.5,
        "stop": ["x"],
        "seed": 1,
    }
    plain = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert "num_predict" not in plain.options().params()  # no limit asked: none imposed
