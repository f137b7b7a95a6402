"""`ff show` of a model pulled with only some of its variants lists the others as not present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ffcli import main
from registry.artifact import layer, tag_model, variants_of, write_index, write_variant
from registry.modelpack import ModelConfig, ModelDescriptor, ModelFS, ModelPackConfig
from registry.oci import ANN_QUANTIZATION, ANN_TARGET, ANN_VARIANT, MODEL_WEIGHT
from registry.store import Store


def _two_variant_model(store: Store) -> None:
    descs = []
    for quant in ("q8_0", "f16"):
        weights = layer(store, MODEL_WEIGHT, "model.gguf", data=f"weights {quant}".encode())
        config = ModelPackConfig(
            descriptor=ModelDescriptor(name="m"),
            config=ModelConfig(architecture="llama", format="gguf", quantization=quant),
            modelfs=ModelFS(diff_ids=[weights.digest]),
        )
        ann = {ANN_VARIANT: f"{quant}-cpu", ANN_TARGET: "cpu", ANN_QUANTIZATION: quant}
        descs.append(write_variant(store, config, [weights], ann))
    tag_model(store, "m:1", write_index(store, descs))


def test_show_lists_absent_variants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_HOME", str(tmp_path))
    store = Store()
    _two_variant_model(store)
    absent = next(v for v in variants_of(store, "m:1") if v.name == "f16-cpu")
    store.blob_path(absent.descriptor.digest).unlink()  # what a pull of only q8_0 leaves

    out = CliRunner().invoke(main, ["show", "m:1"])
    assert out.exit_code == 0, out.output
    row = next(line for line in out.output.splitlines() if line.startswith("f16-cpu"))
    assert "not present" in row

    doc = json.loads(CliRunner().invoke(main, ["show", "m:1", "--json"]).output)
    assert {v["variant"]: v["present"] for v in doc["variants"]} == {"f16-cpu": False, "q8_0-cpu": True}

    other = next(v for v in variants_of(store, "m:1") if v.name == "q8_0-cpu")
    store.blob_path(other.descriptor.digest).unlink()
    out = CliRunner().invoke(main, ["show", "m:1"])
    assert out.exit_code == 1 and "none of m:1's variants is in the store" in out.output
