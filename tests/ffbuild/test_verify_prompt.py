"""verify feeds a model the prompt ``ff serve`` feeds it: one renderer (ffruntime.prompting) for both.

The model is SmolLM2 (Q4_1) with a chat template that uses what Hugging Face templates use and Jinja
alone lacks or does otherwise: ``strftime_now`` and transformers' ``tojson`` (Jinja's own escapes HTML).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

import ffruntime
from ffbuild.build import BuildOptions, build
from ffbuild.cache import BuildCache
from ffbuild.plan import BuildPlan, Source, SourceKind, Variant
from ffbuild.stages.context import BuildError
from ffbuild.stages.verify.gguf import verify_gguf
from ffruntime.llamacpp.eval import LlamaEval
from ffruntime.llamacpp.runtime import LlamaCppRuntime
from ffruntime.runtime import ChatMessage, GenerationRequest
from ffruntime.settings import LoadSettings
from registry.artifact import ModelFiles, VariantRef, open_variant, variants_of
from registry.reference import parse_reference
from registry.store import Store
from tests.models import add_model

DATED = (
    "<|im_start|>system\nToday is {{ strftime_now('%d %B %Y') }}. "
    "The chat: {{ messages | tojson }}<|im_end|>\n"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ONE_THREAD = BuildOptions(threads=1)
QUESTION = "Is 1 < 2 & is 'b' > 'a'?"  # what Jinja's own tojson would escape


def with_chat_template(src: Path, dst: Path, template: str) -> None:
    """A copy of the GGUF ``src`` whose ``tokenizer.chat_template`` is ``template``."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(src)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    writer = gguf.GGUFWriter(dst, arch=str(arch.contents()), endianess=reader.endianess)
    new = {gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(gguf.GGUFValueType.STRING, template)}
    copy_with_new_metadata(reader, writer, new, [])


@pytest.fixture(scope="module")
def dated_gguf(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dated") / "smollm2-dated.gguf"
    with_chat_template(smollm2_gguf, path, DATED)
    return path


def record_prompts(monkeypatch: pytest.MonkeyPatch, cls: type, method: str) -> list[list[int]]:
    """The prompts (tokens) ``cls.method(self, tokens, n)`` generates from, from now on."""
    prompts: list[list[int]] = []
    generate = getattr(cls, method)

    def recording(self: object, tokens: list[int], n: int) -> list[int]:
        prompts.append(list(tokens))
        result: list[int] = generate(self, tokens, n)
        return result

    monkeypatch.setattr(cls, method, recording)
    return prompts


@pytest.fixture
def fed(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The prompts verify generates from (llama.cpp)."""
    return record_prompts(monkeypatch, LlamaEval, "generate")


def served_prompt(v: VariantRef, files: ModelFiles, question: str) -> list[int]:
    """The prompt tokens ``ff serve`` decodes for ``/api/chat`` with one user message."""
    rt = asyncio.run(ffruntime.load(v, files, LoadSettings(threads=1)))
    assert isinstance(rt, LlamaCppRuntime)
    try:
        job = rt.prepare(GenerationRequest(messages=[ChatMessage("user", question)]), lambda _: None)
        job.sampler.close()
        return job.prompt
    finally:
        asyncio.run(rt.close())


def text_of(gguf: Path, tokens: list[int]) -> str:
    with LlamaEval(gguf, threads=1) as m:
        return b"".join(m.piece(t, special=True) for t in tokens).decode()


@pytest.mark.slow
def test_verify_renders_strftime_now_and_tojson_as_the_server_does(
    dated_gguf: Path, fed: list[list[int]], tmp_path: Path
) -> None:
    report = verify_gguf(dated_gguf, prompt=QUESTION, threads=1)
    assert report.loads and report.error is None and report.used_chat_template, report
    assert report.sample
    (verified,) = fed
    store = Store(tmp_path / "store")
    add_model(store, "dated:latest", {"q4_1": dated_gguf})
    (v,) = variants_of(store, "dated:latest")
    assert verified == served_prompt(v, open_variant(store, v.descriptor.digest), QUESTION)
    text = text_of(dated_gguf, verified)
    assert f"Today is {datetime.now(UTC).strftime('%d %B %Y')}." in text
    assert f'"content": "{QUESTION}"' in text  # transformers' tojson: no HTML escapes
    assert text.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


def _plan(gguf: Path, **kw: object) -> BuildPlan:
    source = Source(kind=SourceKind.GGUF_FILE, raw=str(gguf), path=gguf)
    fields = {
        "modelfile": None, "context": Path("/"), "source": source, "task": "chat",
        "variants": (Variant(quantization="source", device="cpu", backend="llamacpp", family="gguf"),),
    }
    return BuildPlan.model_validate({**fields, **kw})


@pytest.mark.slow
def test_the_build_verifies_with_the_modelfile_template(
    dated_gguf: Path, fed: list[list[int]], tmp_path: Path
) -> None:
    """A Go TEMPLATE in the Modelfile is what the server renders, so it is what verify renders too."""
    template = "{{ if .System }}[{{ .System }}] {{ end }}Q: {{ .Prompt }}\nA:"
    store, cache = Store(tmp_path / "s"), BuildCache(tmp_path / "c")
    plan = _plan(dated_gguf, template=template, verify={"prompt": QUESTION})
    build(plan, parse_reference("m:1"), store=store, cache=cache, options=ONE_THREAD)
    (verified,) = fed
    (v,) = variants_of(store, "m:1")
    files = open_variant(store, v.descriptor.digest)
    assert files.verify["used_chat_template"] is True and files.verify["error"] is None
    assert verified == served_prompt(v, files, QUESTION)
    assert text_of(dated_gguf, verified) == f"Q: {QUESTION}\nA:"


@pytest.mark.slow
def test_a_template_that_refuses_the_verify_prompt_fails_the_build(
    smollm2_gguf: Path, tmp_path: Path
) -> None:
    refusing = tmp_path / "refusing.gguf"
    with_chat_template(smollm2_gguf, refusing, "{{ raise_exception('only tool calls, please') }}")
    report = verify_gguf(refusing, threads=1)
    assert report.loads and report.sample is None and report.used_chat_template
    assert report.error is not None and "only tool calls, please" in report.error
    store, cache = Store(tmp_path / "s"), BuildCache(tmp_path / "c")
    with pytest.raises(BuildError, match="only tool calls, please"):
        build(_plan(refusing), parse_reference("m:1"), store=store, cache=cache, options=ONE_THREAD)


@pytest.mark.slow
def test_genai_verify_renders_as_the_genai_runtime_does(
    tmp_path: Path, smollm2_hf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for an ONNX Runtime GenAI variant (its own chat template replaced by :data:`DATED`)."""
    pytest.importorskip("onnxruntime_genai")
    from ffbuild.stages.verify.genai import verify_genai
    from ffruntime.genai_model import GenAIModel
    from ffruntime.onnxruntime_genai import GenAIRuntime
    from tests.genai_home import TAG, build_multi

    build_multi(tmp_path, smollm2_hf)
    store = Store(tmp_path / "store")
    v = next(v for v in variants_of(store, TAG) if v.backend == "onnxruntime")
    monkeypatch.setattr(GenAIModel, "chat_template", lambda self: DATED)
    fed = record_prompts(monkeypatch, GenAIModel, "greedy")
    rt = asyncio.run(ffruntime.load(v, open_variant(store, v.descriptor.digest), LoadSettings(threads=1)))
    assert isinstance(rt, GenAIRuntime)
    try:
        served = rt._plan(GenerationRequest(messages=[ChatMessage("user", QUESTION)])).tokens
        report = verify_genai(rt.folder, reference=None, prompt=QUESTION, threads=1)
        assert report.loads and report.error is None and report.used_chat_template, report
        assert fed == [served]
        text = rt.model.decode(served)
    finally:
        asyncio.run(rt.close())
    assert f"Today is {datetime.now(UTC).strftime('%d %B %Y')}." in text
    assert f'"content": "{QUESTION}"' in text
