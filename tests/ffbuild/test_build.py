"""The pipeline on plans made directly (fast): stage list, refusals, GGUF sources, store sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffbuild.build import STAGES, BuildError, BuildOptions, build
from ffbuild.cache import BuildCache, file_digest
from ffbuild.plan import BuildPlan, Source, SourceKind, Variant
from registry.artifact import open_variant, variants_of
from registry.choices import variant_family
from registry.oci import ANN_AGREEMENT, MODEL_WEIGHT
from registry.reference import parse_reference
from registry.store import Store

NO_VERIFY = BuildOptions(verify=False)


def _plan(source: Source, *variants: Variant, **kw: object) -> BuildPlan:
    fields = {"modelfile": None, "context": Path("/"), "source": source, "variants": variants, "task": "chat"}
    return BuildPlan.model_validate({**fields, **kw})


def _gguf(path: Path) -> Source:
    return Source(kind=SourceKind.GGUF_FILE, raw=str(path), path=path)


def _v(q: str, backend: str = "llamacpp", device: str = "cpu", task: str = "chat") -> Variant:
    return Variant(quantization=q, device=device, backend=backend, family=variant_family(task, backend))


def test_the_stages_in_order() -> None:
    assert [s.name for s in STAGES] == [
        "fetch",
        "convert",
        "quantize",
        "genai",
        "adapters",
        "export",
        "compile",
        "verify",
        "verify-tensor",
        "speech",
        "verify-speech",
        "package",
    ]
    families = {s.name: s.families for s in STAGES}
    assert families["export"] == ("tensor",) and families["genai"] == ("genai",)
    assert families["speech"] == families["verify-speech"] == ("speech",)
    # each stage is the run() of its own module under ffbuild/stages/
    modules = [s.run.__module__ for s in STAGES]
    assert all(m.startswith("ffbuild.stages.") for m in modules) and len(set(modules)) == len(STAGES)
    assert {s.run.__name__ for s in STAGES} == {"run"}


@pytest.mark.parametrize(
    ("backend", "quant", "device"),
    [("onnxruntime", "int8", "cpu"), ("tvm", "fp32", "cpu"), ("tensorrt", "fp16", "cuda")],
)
def test_tensor_backends_from_a_gguf_source_are_refused(
    backend: str, quant: str, device: str, smollm2_gguf: Path, tmp_path: Path
) -> None:
    """A plan made without the planner (which refuses it earlier) still stores nothing."""
    plan = _plan(_gguf(smollm2_gguf), _v("q4_1"), _v(quant, backend, device, "embed"), task="embed")
    store = Store(tmp_path / "s")
    with pytest.raises(
        BuildError, match=r"ONNX-family variants are built from a Hugging Face folder or a \.onnx"
    ):
        build(plan, parse_reference("m:1"), store=store, cache=BuildCache(tmp_path / "c"))
    assert store.tags() == [] and list(store.blobs.iterdir()) == []


def test_genai_needs_hugging_face_weights(smollm2_gguf: Path, tmp_path: Path) -> None:
    plan = _plan(_gguf(smollm2_gguf), _v("q4_1"), _v("int4", "onnxruntime"))
    store = Store(tmp_path / "s")
    with pytest.raises(BuildError, match=r"int4-cpu.*ONNX Runtime GenAI.*Hugging Face weights"):
        build(plan, parse_reference("m:1"), store=store, cache=BuildCache(tmp_path / "c"))
    assert store.tags() == []


def test_requantizing_a_quantized_gguf_is_refused(smollm2_gguf: Path, tmp_path: Path) -> None:
    plan = _plan(_gguf(smollm2_gguf), _v("q8_0"))
    store = Store(tmp_path / "s")
    with pytest.raises(BuildError, match=r"already quantized \(q4_1\).*--allow-requantize"):
        build(plan, parse_reference("m:1"), store=store, cache=BuildCache(tmp_path / "c"), options=NO_VERIFY)
    assert store.tags() == []


def test_gguf_source_kept_as_is(smollm2_gguf: Path, tmp_path: Path) -> None:
    """QUANTIZE absent → the source's own quantization: no convert, no quantize, the file is the weight."""
    store, cache = Store(tmp_path / "s"), BuildCache(tmp_path / "c")
    result = build(
        _plan(_gguf(smollm2_gguf), _v("source")),
        parse_reference("m:1"),
        store=store,
        cache=cache,
        options=NO_VERIFY,
    )
    assert [v.variant.name for v in result.variants] == ["q4_1-cpu"]
    assert result.cache_misses == 0
    (v,) = variants_of(store, "m:1")
    files = open_variant(store, v.descriptor.digest)
    assert files.weights[0] == store.blob_path(file_digest(smollm2_gguf))
    assert files.config.config.quantization == "q4_1" and files.config.config.architecture == "llama"
    assert ANN_AGREEMENT not in v.annotations  # --no-verify writes no figures
    assert files.verify == {}


def test_store_source_reuses_weight_blobs(smollm2_gguf: Path, tmp_path: Path) -> None:
    store, cache = Store(tmp_path / "s"), BuildCache(tmp_path / "c")
    build(
        _plan(_gguf(smollm2_gguf), _v("source"), system="one"),
        parse_reference("base:1"),
        store=store,
        cache=cache,
        options=NO_VERIFY,
    )
    derived = _plan(
        Source(kind=SourceKind.OCI, raw="base:1", reference="base:1"),
        _v("source"),
        system="two",
        parameters={"temperature": 0.1},
    )
    result = build(derived, parse_reference("derived:1"), store=store, cache=cache, options=NO_VERIFY)
    assert result.cache_misses == 0

    def weights(ref: str) -> list[str]:
        (v,) = variants_of(store, ref)
        manifest = store.read_json(v.descriptor.digest)
        return [d["digest"] for d in manifest["layers"] if d["mediaType"] == MODEL_WEIGHT]

    assert weights("derived:1") == weights("base:1") == [file_digest(smollm2_gguf)]
    (v,) = variants_of(store, "derived:1")
    files = open_variant(store, v.descriptor.digest)
    assert files.system == "two" and files.params == {"temperature": 0.1}
