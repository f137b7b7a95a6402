"""The package stage writes ModelPack manifests, an index and tags as docs/artifact-format.md says."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ffbuild.cache import file_digest
from ffbuild.plan import Message, Variant
from ffbuild.stages.context import WeightFile
from ffbuild.stages.package import (
    ModelMeta,
    PackageError,
    VariantPayload,
    add_blob,
    label_annotations,
    package_model,
)
from registry.artifact import open_variant, variants_of
from registry.modelpack import ModelPackConfig
from registry.oci import (
    ANN_AGREEMENT,
    ANN_PPL_RATIO,
    ANN_VARIANT,
    ANNOTATION_FILEPATH,
    FF_ADAPTER,
    FF_MESSAGES,
    FF_MODELFILE,
    FF_PARAMS,
    FF_SYSTEM,
    FF_TEMPLATE,
    FF_VERIFY,
    MODEL_ARTIFACT_TYPE,
    MODEL_CONFIG,
    MODEL_DOC,
    MODEL_WEIGHT,
)
from registry.reference import parse_reference
from registry.store import Store


def _weight(path: Path) -> WeightFile:
    return WeightFile(path, file_digest(path), path.stat().st_size)


@pytest.fixture
def files(tmp_path: Path, smollm2_gguf: Path) -> dict[str, WeightFile]:
    """The real SmolLM2 GGUF as two 'variants' (the second a different file) and a small adapter file."""
    other = tmp_path / "other.gguf"
    other.write_bytes(smollm2_gguf.read_bytes()[: 1 << 20])
    adapter = tmp_path / "lora.gguf"
    adapter.write_bytes(b"GGUF" + b"\0" * 60)
    return {"q4_1": _weight(smollm2_gguf), "f16": _weight(other), "lora": _weight(adapter)}


META = ModelMeta(
    name="smollm2",
    task="chat",
    template="{{ .Prompt }}",
    system="You are terse.",
    parameters={"temperature": 0.0, "stop": ["<|im_end|>"]},
    messages=(Message(role="user", content="hi"), Message(role="assistant", content="hello")),
    licenses=("Apache-2.0 text", "second license"),
    labels={"org.opencontainers.image.source": "https://example.org/x", "maintainer": "me"},
    modelfile="FROM ./x\nSYSTEM You are terse.\n",
)


def _payloads(files: dict[str, WeightFile], *, adapters: bool = True) -> list[VariantPayload]:
    def v(q: str) -> Variant:
        return Variant(quantization=q, device="cpu", backend="llamacpp", family="gguf")

    return [
        VariantPayload(
            v("q4_1"),
            files["q4_1"],
            "llama",
            134_515_008,
            "q4_1",
            adapters=(files["lora"],) if adapters else (),
            verify={"agreement": 0.8125, "perplexity_ratio": 1.25, "loads": True, "sample": "Paris"},
            runtime="llama-cpp-python 0.3.36",
        ),
        VariantPayload(
            v("f16"),
            files["f16"],
            "llama",
            134_515_008,
            "f16",
            verify={"agreement": 1.0, "perplexity_ratio": 1.0, "loads": True, "sample": "Paris"},
        ),
    ]


def test_manifest_index_and_tags(tmp_path: Path, files: dict[str, WeightFile]) -> None:
    store = Store(tmp_path / "store")
    ref = parse_reference("smollm2:latest")
    index, variants, tags = package_model(store, ref, META, _payloads(files))
    assert tags == ["smollm2:latest", "smollm2:latest-f16-cpu", "smollm2:latest-q4_1-cpu"]
    doc = store.read_json(index.digest)
    assert doc["artifactType"] == MODEL_ARTIFACT_TYPE
    assert [m["annotations"][ANN_VARIANT] for m in doc["manifests"]] == ["f16-cpu", "q4_1-cpu"]
    q4 = next(v for v in variants if v.annotations and v.annotations[ANN_VARIANT] == "q4_1-cpu")
    manifest = store.read_json(q4.digest)
    assert manifest["config"]["mediaType"] == MODEL_CONFIG
    config = store.read_json(manifest["config"]["digest"])
    assert set(config) == {"descriptor", "config", "modelfs"}
    ModelPackConfig.model_validate(config)  # the schema forbids extra fields
    assert config["config"] == {
        "architecture": "llama",
        "format": "gguf",
        "paramSize": "135M",
        "precision": "q4_1",
        "quantization": "q4_1",
        "capabilities": {"inputTypes": ["text"], "outputTypes": ["text"]},
    }
    assert config["modelfs"]["diffIds"] == [d["digest"] for d in manifest["layers"]]
    layers = [(d["mediaType"], d["annotations"][ANNOTATION_FILEPATH]) for d in manifest["layers"]]
    assert layers == [
        (MODEL_WEIGHT, "model.gguf"),
        (FF_ADAPTER, "adapters/0.gguf"),
        (MODEL_DOC, "LICENSE"),
        (MODEL_DOC, "LICENSE-2"),
        (FF_TEMPLATE, "template.txt"),
        (FF_SYSTEM, "system.txt"),
        (FF_PARAMS, "params.json"),
        (FF_MESSAGES, "messages.json"),
        (FF_MODELFILE, "Modelfile"),
        (FF_VERIFY, "verify.json"),
    ]
    ann = manifest["annotations"]
    assert ann[ANN_AGREEMENT] == "0.8125" and ann[ANN_PPL_RATIO] == "1.2500"
    assert ann["org.opencontainers.image.source"] == "https://example.org/x"
    assert ann["io.ferrousforge.label.maintainer"] == "me"
    assert ann["io.ferrousforge.runtime"] == "llama-cpp-python 0.3.36"
    assert int(ann["io.ferrousforge.min-memory-bytes"]) == files["q4_1"].size + files["lora"].size
    assert not any("created" in k.lower() for k in ann)
    # the index entry carries the same annotations, so clients can choose without fetching manifests
    entry = next(m for m in doc["manifests"] if m["digest"] == q4.digest)
    assert entry["annotations"] == ann


def test_reads_back_through_registry_artifact(tmp_path: Path, files: dict[str, WeightFile]) -> None:
    store = Store(tmp_path / "store")
    package_model(store, parse_reference("m:1"), META, _payloads(files))
    (q4,) = [v for v in variants_of(store, "m:1") if v.name == "q4_1-cpu"]
    mf = open_variant(store, q4.descriptor.digest)
    assert mf.system == "You are terse." and mf.template == "{{ .Prompt }}"
    assert mf.params == {"temperature": 0.0, "stop": ["<|im_end|>"]}
    assert mf.messages == [{"content": "hi", "role": "user"}, {"content": "hello", "role": "assistant"}]
    assert mf.licenses == ["Apache-2.0 text", "second license"]
    assert mf.modelfile == META.modelfile
    assert mf.verify["agreement"] == 0.8125
    assert mf.weights[0].read_bytes() == files["q4_1"].path.read_bytes()
    assert len(mf.adapters) == 1


def test_same_inputs_same_digests_in_a_fresh_store(tmp_path: Path, files: dict[str, WeightFile]) -> None:
    a = package_model(Store(tmp_path / "a"), parse_reference("m:1"), META, _payloads(files))
    b = package_model(Store(tmp_path / "b"), parse_reference("m:1"), META, _payloads(files))
    assert a[0].digest == b[0].digest
    assert [d.digest for d in a[1]] == [d.digest for d in b[1]]
    index = json.loads(Store(tmp_path / "a").read_blob(a[0].digest))
    raw = Store(tmp_path / "a").read_blob(a[0].digest)
    assert raw == json.dumps(index, sort_keys=True, separators=(",", ":")).encode()


def test_rebuild_with_fewer_variants_drops_stale_variant_tags(
    tmp_path: Path, files: dict[str, WeightFile]
) -> None:
    store = Store(tmp_path / "store")
    ref = parse_reference("m:1")
    package_model(store, ref, META, _payloads(files))
    package_model(store, ref, META, _payloads(files)[1:])
    assert sorted(n for n, _ in store.tags()) == ["m:1", "m:1-f16-cpu"]


def test_blob_with_wrong_digest_is_refused_and_leaves_nothing(
    tmp_path: Path, files: dict[str, WeightFile]
) -> None:
    store = Store(tmp_path / "store")
    real = files["f16"]
    lie = WeightFile(real.path, "sha256:" + hashlib.sha256(b"something else").hexdigest(), real.size)
    with pytest.raises(PackageError, match="cache is damaged"):
        add_blob(store, lie)
    assert list(store.blobs.iterdir()) == []
    assert list(store.ingest.iterdir()) == []


def test_duplicate_variant_names_are_refused(tmp_path: Path, files: dict[str, WeightFile]) -> None:
    p = _payloads(files)
    with pytest.raises(PackageError, match="share a name"):
        package_model(Store(tmp_path / "s"), parse_reference("m:1"), META, [p[0], p[0]])


LABEL_CASES = [
    ({"org.opencontainers.image.licenses": "MIT"}, {"org.opencontainers.image.licenses": "MIT"}),
    ({"team": "ml"}, {"io.ferrousforge.label.team": "ml"}),
    ({"org.example.x": "1"}, {"io.ferrousforge.label.org.example.x": "1"}),
]


@pytest.mark.parametrize(("labels", "expected"), LABEL_CASES)
def test_label_annotations(labels: dict[str, str], expected: dict[str, str]) -> None:
    assert label_annotations(labels) == expected
