from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.artifact import (
    ArtifactError,
    layer,
    open_variant,
    parse_manifest,
    safe_filepath,
    tag_model,
    variants_of,
    write_index,
    write_variant,
)
from registry.modelpack import ModelConfig, ModelDescriptor, ModelFS, ModelPackConfig, param_size
from registry.oci import (
    ANN_BACKEND,
    ANN_QUANTIZATION,
    ANN_TARGET,
    ANN_VARIANT,
    FF_PARAMS,
    FF_SYSTEM,
    FF_TEMPLATE,
    MAX_MANIFEST_BYTES,
    MODEL_DOC,
    MODEL_WEIGHT,
    Index,
    Manifest,
)
from registry.store import Store


def _variant(store: Store, quant: str, weights: bytes) -> tuple[str, object]:
    layers = [
        layer(store, MODEL_WEIGHT, "model.gguf", data=weights),
        layer(store, FF_TEMPLATE, "template.txt", data=b"{{ .Prompt }}"),
        layer(store, FF_SYSTEM, "system.txt", data=b"Be brief."),
        layer(
            store,
            FF_PARAMS,
            "params.json",
            data=json.dumps({"stop": ["<|im_end|>"], "temperature": 0.2}).encode(),
        ),
        layer(store, MODEL_DOC, "LICENSE", data=b"Apache-2.0"),
    ]
    config = ModelPackConfig(
        descriptor=ModelDescriptor(name="tiny"),
        config=ModelConfig(architecture="llama", format="gguf", param_size="135M", quantization=quant),
        modelfs=ModelFS(diff_ids=[d.digest for d in layers]),
    )
    ann = {ANN_VARIANT: f"{quant}-cpu", ANN_TARGET: "cpu", ANN_BACKEND: "llamacpp", ANN_QUANTIZATION: quant}
    return f"{quant}-cpu", write_variant(store, config, layers, ann)


def _model(store: Store) -> object:
    descs = [_variant(store, q, w)[1] for q, w in (("q8_0", b"W8"), ("f16", b"W16"))]
    index = write_index(store, descs)  # type: ignore[arg-type]
    tag_model(store, "tiny:1", index)
    return index


def test_write_read_roundtrip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    index = _model(store)
    names = sorted(n for n, _ in store.tags())
    assert names == ["tiny:1", "tiny:1-f16-cpu", "tiny:1-q8_0-cpu"]
    vs = variants_of(store, "tiny:1")
    assert [v.name for v in vs] == ["f16-cpu", "q8_0-cpu"]  # sorted by name
    assert {v.quantization for v in vs} == {"f16", "q8_0"}
    files = open_variant(store, vs[1].descriptor.digest)
    assert files.template == "{{ .Prompt }}" and files.system == "Be brief."
    assert files.params == {"stop": ["<|im_end|>"], "temperature": 0.2}
    assert files.licenses == ["Apache-2.0"]
    assert files.weights[0].read_bytes() == b"W8"
    # A variant tag resolves to a single manifest with the same annotations.
    (single,) = variants_of(store, "tiny:1-q8_0-cpu")
    assert single.descriptor.digest == vs[1].descriptor.digest and single.quantization == "q8_0"
    assert store.resolve("tiny:1").digest == index.digest  # type: ignore[attr-defined]


def test_reproducible_digests(tmp_path: Path) -> None:
    a = _model(Store(tmp_path / "a"))
    b = _model(Store(tmp_path / "b"))
    assert a.digest == b.digest  # type: ignore[attr-defined]


def test_manifest_shape_is_modelpack(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _model(store)
    man = store.read_json(variants_of(store, "tiny:1")[0].descriptor.digest)
    assert man["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert man["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    for d in man["layers"]:
        assert d["annotations"]["org.cncf.model.filepath"]
        assert d["annotations"]["org.opencontainers.image.title"]
    cfg = store.read_json(man["config"]["digest"])
    assert set(cfg) == {"descriptor", "config", "modelfs"}
    assert cfg["modelfs"]["type"] == "layers" and len(cfg["modelfs"]["diffIds"]) == len(man["layers"])


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/./b", "", "a\\b", "C:/x", "a\x00b", "a/"]
)
def test_unsafe_filepaths_refused(path: str) -> None:
    with pytest.raises(ArtifactError):
        safe_filepath(path)


@pytest.mark.parametrize(
    "path", ["model.gguf", "adapters/lora-1.gguf", "tokenizer/tokenizer.json", "LICENSE"]
)
def test_safe_filepaths_accepted(path: str) -> None:
    assert safe_filepath(path) == path


def test_open_variant_refuses_traversal_layer(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _, desc = _variant(store, "q8_0", b"W")
    man = store.read_json(desc.digest)  # type: ignore[attr-defined]
    man["layers"][0]["annotations"]["org.cncf.model.filepath"] = "../../escape"
    bad = store.add_json(man, man["mediaType"])
    with pytest.raises(ArtifactError, match="escapes"):
        open_variant(store, bad.digest)


def test_parse_manifest_bounds_and_shapes() -> None:
    with pytest.raises(ArtifactError, match="limit"):
        parse_manifest(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ArtifactError, match="not JSON"):
        parse_manifest(b"\xff")
    with pytest.raises(ArtifactError, match="malformed"):
        parse_manifest(b'{"schemaVersion": 2, "layers": "x"}')
    idx = parse_manifest(b'{"schemaVersion": 2, "manifests": []}')
    assert isinstance(idx, Index) and not isinstance(idx, Manifest)


@pytest.mark.parametrize(
    ("count", "text"), [(134_515_008, "135M"), (6_738_415_616, "6.7B"), (22_700_000, "22.7M"), (999, "999")]
)
def test_param_size(count: int, text: str) -> None:
    if count < 1000:
        assert param_size(count).endswith("K")
    else:
        assert param_size(count) == text


def test_modelpack_forbids_extra_fields() -> None:
    with pytest.raises(ValueError):
        ModelPackConfig.model_validate(
            {
                "descriptor": {},
                "config": {"template": "x"},
                "modelfs": {"type": "layers", "diffIds": ["sha256:" + "0" * 64]},
            }
        )
    with pytest.raises(ValueError):
        ModelConfig(param_size="lots")


def test_variant_tags_are_never_truncated() -> None:
    from registry.artifact import variant_tag

    assert variant_tag("v1", "q8_0-cpu") == "v1-q8_0-cpu"
    with pytest.raises(ArtifactError, match="128"):
        variant_tag("t" * 120, "q4_k_m-cpu")  # cut, two variants could share one tag
