"""The one options table and what is derived from it: the PARAMETER parser, the request model, each text
runtime's sampler settings, and the one place a model's PARAMETERs meet a request's options."""

from __future__ import annotations

import asyncio
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

import ffruntime
from ffbuild.errors import ModelfilePlanError
from ffbuild.modelfile import parse
from ffbuild.params import DEPRECATED_PARAMETERS, PARAMETERS
from ffbuild.planner import make_plan
from ffruntime.llamacpp.sampling import Sampling, sampling
from ffruntime.options import OPTIONS, model_options, number
from ffruntime.runtime import ChatMessage, GenerationRequest, ParamValue, RequestRejected, TextRuntime, Token
from ffruntime.settings import LoadSettings
from ffserve.wire.options import Options
from registry.artifact import open_variant, variants_of
from registry.store import Store
from tests.models import add_model

MIROSTAT = {"mirostat": 2, "mirostat_tau": 3.5, "mirostat_eta": 0.25}


def parameters(text: str, tmp_path: Path) -> dict[str, ParamValue]:
    plan = make_plan(parse(f"FROM llama3\n{text}", filename="Modelfile"), context=tmp_path)
    assert plan.warnings == ()
    return dict(plan.parameters)


def from_modelfile(tmp_path: Path) -> dict[str, ParamValue]:
    """The mirostat options as a Modelfile's PARAMETERs, merged with a request that sets none."""
    lines = "".join(f"PARAMETER {k} {v}\n" for k, v in MIROSTAT.items())
    return model_options(parameters(lines, tmp_path), Options.model_validate({}).params())


def from_request() -> dict[str, ParamValue]:
    """The same options sent by a client, for a model without PARAMETERs."""
    return model_options({}, Options.model_validate(MIROSTAT, strict=True).params())


def test_the_table_is_what_every_reader_knows() -> None:
    assert set(Options.model_fields) == set(OPTIONS) | {"tool_choice"}
    assert set(PARAMETERS) | DEPRECATED_PARAMETERS == {n for n, o in OPTIONS.items() if o.parameter}
    assert {"num_ctx", "num_batch", "num_gpu", "num_thread", "use_mmap"} <= {
        n for n, o in OPTIONS.items() if o.timing == "load"
    }
    for name, kind in typing.get_type_hints(Sampling).items():  # llama.cpp reads each as the table says
        assert OPTIONS[name].kind is kind
        assert OPTIONS[name].timing == ("load" if name == "num_ctx" else "request")


def test_mirostat_is_alike_as_parameter_and_as_request_option(tmp_path: Path) -> None:
    assert from_modelfile(tmp_path) == from_request() == MIROSTAT
    s = sampling(from_modelfile(tmp_path))
    assert s == sampling(from_request())
    assert (s.mirostat, s.mirostat_tau, s.mirostat_eta) == (2, 3.5, 0.25)


def test_mirostat_is_refused_alike(tmp_path: Path) -> None:
    with pytest.raises(ModelfilePlanError, match="mirostat"):
        parameters("PARAMETER mirostat 3\n", tmp_path)
    with pytest.raises(ValidationError, match="mirostat"):
        Options.model_validate({"mirostat": 3})
    with pytest.raises(RequestRejected, match="option mirostat must be 0, 1 or 2"):
        sampling({"mirostat": 3})


def test_genai_treats_mirostat_alike(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime_genai")
    from ffruntime.onnxruntime_genai import search_options

    for options in (from_modelfile(tmp_path), from_request()):
        with pytest.raises(RequestRejected, match="option mirostat is not available on ONNX Runtime GenAI"):
            search_options(options)
    tau_only = {"mirostat_tau": 3.5, "mirostat_eta": 0.25}
    lines = "".join(f"PARAMETER {k} {v}\n" for k, v in tau_only.items())
    assert search_options(model_options(parameters(lines, tmp_path), {})) == search_options(tau_only)


def test_request_options_win_and_a_request_stop_replaces_the_modelfile_s() -> None:
    params = {"temperature": 0.2, "stop": ["a", "b"], "seed": 3, "bad": {"x": 1}}
    merged = model_options(params, {"temperature": 0.9, "stop": ["c"]})
    assert merged == {"temperature": 0.9, "stop": ["c"], "seed": 3}
    assert model_options(params, {}) == {"temperature": 0.2, "stop": ["a", "b"], "seed": 3}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("top_k", 1.5, "option top_k must be an integer"),
        ("top_k", True, "option top_k must be an integer"),
        ("temperature", "hot", "option temperature must be a number"),
        ("temperature", float("nan"), "option temperature must be a number"),
        ("mirostat", 5, "option mirostat must be 0, 1 or 2"),
    ],
)
def test_numbers_are_typed_by_the_table(name: str, value: ParamValue, message: str) -> None:
    with pytest.raises(RequestRejected, match=message):
        number(name, value)


def test_numbers_take_the_table_s_type() -> None:
    assert number("top_k", 40.0) == 40 and type(number("top_k", 40.0)) is int
    assert type(number("temperature", 1)) is float


def _text(tmp_path: Path, gguf: Path, params: dict[str, ParamValue], options: dict[str, ParamValue]) -> str:
    store = Store(tmp_path / "store")
    add_model(store, "m:latest", {"q4_1": gguf}, params=dict(params))
    v = variants_of(store, "m:latest")[0]
    files = open_variant(store, v.descriptor.digest)

    async def go() -> str:
        rt = await ffruntime.load(v, files, LoadSettings(threads=1, num_ctx=256))
        try:
            assert isinstance(rt, TextRuntime)
            request = GenerationRequest(
                messages=[ChatMessage("user", "Tell me a story.")],
                options=model_options(files.params, {"seed": 7, "num_predict": 24, **options}),
            )
            return "".join([ev.text async for ev in rt.generate(request) if isinstance(ev, Token)])
        finally:
            await rt.close()

    return asyncio.run(go())


def test_llamacpp_samples_alike_with_mirostat_from_either_place(tmp_path: Path, smollm2_gguf: Path) -> None:
    pytest.importorskip("llama_cpp")
    lines = "".join(f"PARAMETER {k} {v}\n" for k, v in MIROSTAT.items())
    built = _text(tmp_path / "built", smollm2_gguf, parameters(lines, tmp_path), {})
    asked = _text(tmp_path / "asked", smollm2_gguf, {}, Options.model_validate(MIROSTAT).params())
    assert built == asked != ""
