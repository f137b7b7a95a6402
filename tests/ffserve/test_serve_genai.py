"""A real ``ff serve`` of smollm2-multi (q4_0 GGUF + int4 ONNX): the int4 variant through the unmodified
``ollama`` and ``openai`` clients, and the choice between the variants by installed backends and
``--backend`` (FF_BACKEND)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from registry.artifact import variants_of
from registry.store import Store
from tests.ffserve.serve_testkit import Server, start_server
from tests.genai_home import TAG, build_multi

QUESTION = "What is the capital of France?"
MODEL = "smollm2-multi"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path) -> Path:
    home = tmp_path_factory.mktemp("genai-serve")
    build_multi(home, smollm2_hf)
    return home


def digests(home: Path) -> dict[str, str]:
    return {v.backend: v.descriptor.digest for v in variants_of(Store(home / "store"), TAG)}


@pytest.fixture(scope="module")
def server(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This module's server serves the ONNX Runtime GenAI variant (conftest's ``oc``/``ai`` talk to it)."""
    with start_server(home, tmp_path_factory.mktemp("logs"), FF_BACKEND="onnxruntime") as s:
        yield s


def msgs() -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTION}]


def test_ollama_chat_serves_the_int4_variant(oc: ollama.Client, home: Path) -> None:
    r = oc.chat(model=MODEL, messages=msgs())
    assert "Paris" in r.message.content, r.message.content
    assert r.done_reason == "stop" and r.eval_count and r.eval_count >= 10  # full length, no default limit
    assert r.prompt_eval_count and r.prompt_eval_count > 20
    running = {m.model: m for m in oc.ps().models}
    assert running[f"{MODEL}:latest"].digest == digests(home)["onnxruntime"].split(":", 1)[1]


def test_ollama_chat_and_generate_stream(oc: ollama.Client) -> None:
    parts = list(oc.chat(model=MODEL, messages=msgs(), stream=True))
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "Paris" in "".join(p.message.content or "" for p in parts)
    assert parts[-1].done_reason == "stop"
    whole = oc.generate(model=MODEL, prompt=QUESTION)
    chunks = list(oc.generate(model=MODEL, prompt=QUESTION, stream=True))
    assert "".join(c.response or "" for c in chunks) == whole.response and "Paris" in whole.response


def test_ollama_options_and_format(oc: ollama.Client) -> None:
    r = oc.generate(model=MODEL, prompt="Count: one, two,", raw=True, options={"num_predict": 3})
    assert r.done_reason == "length" and r.eval_count == 3
    stopped = oc.generate(model=MODEL, prompt=QUESTION, options={"stop": ["Paris"]})
    assert "Paris" not in stopped.response and stopped.done_reason == "stop"
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
              "required": ["city"], "additionalProperties": False}
    j = oc.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION + " Answer in JSON."}],
                format=schema)
    assert "Paris" in json.loads(j.message.content)["city"]


def test_ollama_client_mistakes_are_400s(oc: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        oc.generate(model=MODEL, prompt=QUESTION, options={"mirostat": 2})
    assert info.value.status_code == 400 and "mirostat" in str(info.value)
    for stream in (False, True):
        with pytest.raises(ollama.ResponseError) as info:
            r = oc.chat(model=MODEL, messages=msgs(), format={"type": "nonsense"}, stream=stream)
            list(r) if stream else r  # type: ignore[call-overload]
        assert info.value.status_code == 400 and "JSON schema" in str(info.value)


def test_ollama_show_describes_the_onnx_variant(oc: ollama.Client) -> None:
    info = oc.show(MODEL)
    assert info.details and info.details.format == "onnx"
    assert "chat" in (info.capabilities or [])


def test_openai_chat(ai: openai.OpenAI) -> None:
    r = ai.chat.completions.create(model=MODEL, messages=msgs())  # type: ignore[arg-type]
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason == "stop" and r.usage and r.usage.completion_tokens >= 10


def test_openai_chat_stream(ai: openai.OpenAI) -> None:
    stream = ai.chat.completions.create(
        model=MODEL, messages=msgs(), stream=True, stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"] and chunks[-1].usage is not None


def test_the_server_loaded_no_torch(server: Server, oc: ollama.Client) -> None:
    oc.generate(model=MODEL, prompt=QUESTION, options={"num_predict": 2})
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "onnxruntime" in maps  # the model is loaded in this process …
    assert "libtorch" not in maps and "libc10" not in maps  # … and torch is not


def test_default_choice_and_backend_flag(home: Path, tmp_path: Path) -> None:
    """With llama.cpp and ONNX Runtime GenAI both installed, the CPU variants rank by precision (q4_0,
    4.5 bits, over int4); FF_BACKEND=llamacpp keeps it; an uninstalled choice is a 400 naming it."""
    want = digests(home)
    for env, backend in (({}, "llamacpp"), ({"FF_BACKEND": "llamacpp"}, "llamacpp")):
        with start_server(home, tmp_path, FF_QUANTIZE="", **env) as s:
            c = ollama.Client(host=s.url)
            assert "Paris" in c.chat(model=MODEL, messages=msgs()).message.content
            running = {m.model: m for m in c.ps().models}
            assert running[f"{MODEL}:latest"].digest == want[backend].split(":", 1)[1]
    with start_server(home, tmp_path, FF_BACKEND="tvm") as s:
        with pytest.raises(ollama.ResponseError) as info:
            ollama.Client(host=s.url).chat(model=MODEL, messages=msgs())
        assert info.value.status_code == 400 and "no variant matches" in str(info.value)


@pytest.mark.parametrize(
    ("backends", "generators", "chosen"),
    [
        ({"llamacpp", "onnxruntime"}, {"onnxruntime"}, "q4_0-cpu"),  # both: precision decides
        ({"onnxruntime"}, {"onnxruntime"}, "int4-cpu"),  # no llama.cpp here
        ({"llamacpp", "onnxruntime"}, set(), "q4_0-cpu"),  # onnxruntime without GenAI
    ],
)
def test_choice_by_installed_backends(backends: set[str], generators: set[str], chosen: str) -> None:
    from registry.artifact import VariantRef
    from registry.oci import ANN_BACKEND, ANN_QUANTIZATION, ANN_TARGET, ANN_TASK, ANN_VARIANT, Descriptor
    from registry.select import HostInfo, SelectionError, select_variant

    def v(quant: str, backend: str) -> VariantRef:
        ann = {ANN_VARIANT: f"{quant}-cpu", ANN_TARGET: "cpu", ANN_BACKEND: backend, ANN_QUANTIZATION: quant,
               ANN_TASK: "chat"}
        return VariantRef(Descriptor(media_type="x", digest="sha256:" + "0" * 64, size=1, annotations=ann))

    vs = [v("q4_0", "llamacpp"), v("int4", "onnxruntime")]
    host = HostInfo(frozenset({"cpu"}), frozenset(), frozenset(backends), generators=frozenset(generators))
    assert select_variant(vs, host=host).name == chosen
    if "onnxruntime" not in generators:
        with pytest.raises(SelectionError, match="no variant fits"):
            select_variant(vs, backend="onnxruntime", host=host)
