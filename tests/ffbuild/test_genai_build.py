"""`ff build` of modelfiles/smollm2-multi from the SmolLM2 HF folder: q4_0 (llama.cpp) and int4 (ONNX
Runtime GenAI) variants of the same weights in one tag, both verified against the f16 conversion (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ffbuild.stages.genai import cuda_available
from registry.oci import ANNOTATION_FILEPATH, MODEL_WEIGHT, MODEL_WEIGHT_CONFIG
from registry.store import Store
from tests.genai_home import TAG, build_multi, ff, new_home

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path) -> tuple[Path, dict[str, object]]:
    home = tmp_path_factory.mktemp("genai-build")
    return home, build_multi(home, smollm2_hf)


def test_both_variants_with_verify_figures(built: tuple[Path, dict[str, object]]) -> None:
    home, doc = built
    vs = {v["name"]: v for v in doc["variants"]}  # type: ignore[attr-defined]
    assert set(vs) == {"q4_0-cpu", "int4-cpu"}
    assert vs["int4-cpu"]["backend"] == "onnxruntime" and vs["q4_0-cpu"]["backend"] == "llamacpp"
    show = json.loads(ff(home, "show", TAG, "--json").stdout)
    by = {v["variant"]: v for v in show["variants"]}
    for name in ("q4_0-cpu", "int4-cpu"):
        report = by[name]["verify"]
        assert report["loads"] is True and report["reference"] == "f16", report
        assert report["agreement_kind"] == "next-token" and report["tokens_evaluated"] > 100
        assert 0.4 < report["agreement"] < 1.0  # measured: q4_0 0.714, int4 0.563
        assert 1.0 < report["perplexity_ratio"] < 1.5  # measured: q4_0 1.076, int4 1.165
        assert "Paris" in report["sample"], report["sample"]
        assert report["used_chat_template"] is True
    assert by["int4-cpu"]["annotations"]["io.ferrousforge.runtime"].startswith("onnxruntime-genai ")
    text = ff(home, "show", TAG).stdout
    for name in ("q4_0-cpu", "int4-cpu"):
        line = next(line for line in text.splitlines() if line.startswith(name))
        assert f"{by[name]['agreement']:.3f}" in line and f"{by[name]['perplexity_ratio']:.3f}" in line


def test_onnx_layers_and_annotations(built: tuple[Path, dict[str, object]]) -> None:
    home, _ = built
    show = json.loads(ff(home, "show", TAG, "--json").stdout)
    v = next(x for x in show["variants"] if x["variant"] == "int4-cpu")
    store = Store(home / "store")
    manifest = store.read_json(v["digest"])
    layers = {d["annotations"][ANNOTATION_FILEPATH]: d["mediaType"] for d in manifest["layers"]}
    assert layers["model.onnx"] == MODEL_WEIGHT and layers["model.onnx.data"] == MODEL_WEIGHT
    for name in ("genai_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert layers[name] == MODEL_WEIGHT_CONFIG
    assert "model.gguf" not in layers
    ann = manifest["annotations"]
    assert ann["io.ferrousforge.format"] == "onnx" and ann["io.ferrousforge.quantization"] == "int4"
    config = store.read_json(manifest["config"]["digest"])
    assert config["config"]["format"] == "onnx" and config["config"]["quantization"] == "int4"
    weights = sum(d["size"] for d in manifest["layers"] if d["mediaType"] == MODEL_WEIGHT)
    assert 60e6 < weights < 120e6  # int4 decoder of a 135M model (measured 86 MB of weights)


def test_rebuild_is_all_cache_hits_and_same_digest(
    built: tuple[Path, dict[str, object]], smollm2_hf: Path, tmp_path: Path
) -> None:
    _, first = built
    again = build_multi(tmp_path / "again", smollm2_hf)
    assert again["index"] == first["index"]
    assert all(not v["work_done"] for v in again["variants"])  # type: ignore[attr-defined]
    stages = {s["name"]: s["summary"] for s in again["stages"]}  # type: ignore[attr-defined]
    assert "0 exported, 1 from the cache" in stages["genai"]


@pytest.mark.skipif(cuda_available(), reason="this machine has the CUDA provider")
def test_cuda_variant_says_what_to_install(smollm2_hf: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {smollm2_hf}\nQUANTIZE int4\nTARGET cuda BACKEND onnxruntime\nTASK chat\n")
    proc = ff(new_home(tmp_path / "home"), "build", "-f", str(modelfile), "-t", "m:cuda", check=False)
    assert proc.returncode != 0
    assert "pip install onnxruntime-genai-cuda" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(cuda_available(), reason="this machine has the CUDA provider")
def test_cuda_export_without_verify_loads_nowhere_here(smollm2_hf: Path, tmp_path: Path) -> None:
    """The builder exports a CUDA graph on any machine; running it needs onnxruntime-genai-cuda."""
    import asyncio

    import ffruntime
    from ffruntime.errors import BackendUnavailable
    from ffruntime.settings import LoadSettings
    from registry.artifact import open_variant, variants_of

    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {smollm2_hf}\nQUANTIZE int4\nTARGET cuda BACKEND onnxruntime\nTASK chat\n")
    home = new_home(tmp_path / "home")
    ff(home, "build", "-f", str(modelfile), "-t", "m:cuda", "--no-verify")
    store = Store(home / "store")
    (v,) = variants_of(store, "m:cuda")
    assert v.name == "int4-cuda" and v.device == "cuda"
    files = open_variant(store, v.descriptor.digest)
    config = json.loads(files.files["genai_config.json"].read_text())
    assert "cuda" in json.dumps(config["model"]["decoder"]["session_options"]["provider_options"])
    with pytest.raises(BackendUnavailable, match="pip install onnxruntime-genai-cuda"):
        asyncio.run(ffruntime.load(v, files, LoadSettings(threads=1)))
