"""Multimodal builds: a vision-language folder gives the text model and its projector (llama.cpp's
converter, ``--mmproj``) as two weight layers of each GGUF variant; two FROM lines (model GGUF +
projector GGUF, as Ollama's) give the same shape; ``ff show`` lists the capabilities; llama.cpp's mtmd
loads the stored projector with the stored text model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry.artifact import open_variant, variants_of
from registry.oci import ANN_WEIGHT_ROLE, MODEL_WEIGHT, PROJECTOR_FILEPATH, ROLE_PROJECTOR
from registry.reference import parse_reference
from registry.store import Store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FF = [sys.executable, "-c", "from ffcli import main; main()"]


def ff(*args: str, home: Path) -> str:
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9"}
    proc = subprocess.run([*FF, *args], env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, f"ff {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _check_variant(store: Store, ref: str) -> tuple[Path, Path]:
    """Every variant: the model layer, then mmproj.gguf with the projector role; inputs text + image."""
    found = variants_of(store, parse_reference(ref))
    assert found
    for v in found:
        files = open_variant(store, v.descriptor.digest)
        weights = [d for d in files.manifest.layers if d.media_type == MODEL_WEIGHT]
        assert [(d.annotations or {}).get("org.cncf.model.filepath") for d in weights] == [
            "model.gguf",
            PROJECTOR_FILEPATH,
        ]
        assert (weights[1].annotations or {})[ANN_WEIGHT_ROLE] == ROLE_PROJECTOR
        assert (
            files.projector is not None and len(files.weights) == 1
        )  # the runtime's weights[0] is the model
        caps = files.config.config.capabilities
        assert caps is not None and caps.input_types == ["text", "image"] and caps.output_types == ["text"]
    return files.weights[0], files.projector


def test_vlm_folder_builds_a_projector_layer(qwen2vl_hf: Path, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text(f"FROM {qwen2vl_hf}\nQUANTIZE f16 q8_0\nTASK generate\n")
    out = ff("build", "-f", str(tmp_path / "Modelfile"), "-t", "vlm:1", home=tmp_path / "home")
    assert "vlm:1" in out
    model, projector = _check_variant(Store(tmp_path / "home" / "store"), "vlm:1")
    shown = ff("show", "vlm:1", home=tmp_path / "home")
    assert "capabilities  text, image → text" in shown and f"projector     {PROJECTOR_FILEPATH}" in shown
    doc = json.loads(ff("show", "vlm:1", "--json", home=tmp_path / "home"))
    assert doc["capabilities"] == {"inputTypes": ["text", "image"], "outputTypes": ["text"]}
    assert doc["projector"] is True
    _mtmd_loads(model, projector)


def test_two_from_lines_give_the_same_shape(qwen2vl_ggufs: tuple[Path, Path], tmp_path: Path) -> None:
    model, projector = qwen2vl_ggufs
    (tmp_path / "Modelfile").write_text(f"FROM {model}\nFROM {projector}\nTASK generate\n")
    ff("build", "-f", str(tmp_path / "Modelfile"), "-t", "vlm2:1", "--no-verify", home=tmp_path / "home")
    stored_model, stored_projector = _check_variant(Store(tmp_path / "home" / "store"), "vlm2:1")
    assert stored_projector.read_bytes() == projector.read_bytes()
    assert stored_model.read_bytes() == model.read_bytes()


def test_a_second_from_must_be_a_projector(smollm2_gguf: Path, tmp_path: Path) -> None:
    from ffbuild.errors import ModelfileError
    from ffbuild.planner import plan_file

    (tmp_path / "Modelfile").write_text(f"FROM {smollm2_gguf}\nFROM {smollm2_gguf}\n")
    with pytest.raises(ModelfileError, match="more than one FROM") as e:
        plan_file(tmp_path / "Modelfile")
    assert "multimodal projector GGUF" in str(e.value)


def _mtmd_loads(model: Path, projector: Path, *, vision: bool = True, audio: bool = False) -> None:
    """llama.cpp's multimodal library (what serving media uses) takes the pair, with what it encodes."""
    from llama_cpp import mtmd_cpp

    from ffruntime.llamacpp.library import binding, free_handles, load_model, model_params
    from ffruntime.settings import LoadSettings

    binding()
    handle = load_model(model, model_params(LoadSettings()))
    try:
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.warmup = False
        ctx = mtmd_cpp.mtmd_init_from_file(str(projector).encode(), handle, params)
        assert ctx, f"mtmd refused {projector}"
        try:
            assert bool(mtmd_cpp.mtmd_support_vision(ctx)) is vision
            assert bool(mtmd_cpp.mtmd_support_audio(ctx)) is audio
        finally:
            mtmd_cpp.mtmd_free(ctx)
    finally:
        free_handles(None, (), handle)


def test_audio_folder_builds_an_audio_projector(qwen2audio_hf: Path, tmp_path: Path) -> None:
    """A Qwen2-Audio folder: the text model and its audio projector (libmtmd's QWEN2A); ``ff show`` lists
    audio; libmtmd loads the stored pair with audio and without vision."""
    (tmp_path / "Modelfile").write_text(f"FROM {qwen2audio_hf}\nQUANTIZE f16\n")
    ff("build", "-f", str(tmp_path / "Modelfile"), "-t", "alm:1", home=tmp_path / "home")
    (v,) = variants_of(Store(tmp_path / "home" / "store"), parse_reference("alm:1"))
    files = open_variant(Store(tmp_path / "home" / "store"), v.descriptor.digest)
    caps = files.config.config.capabilities
    assert caps is not None and caps.input_types == ["text", "audio"]
    shown = ff("show", "alm:1", home=tmp_path / "home")
    assert "capabilities  text, audio → text" in shown and f"projector     {PROJECTOR_FILEPATH}" in shown
    doc = json.loads(ff("show", "alm:1", "--json", home=tmp_path / "home"))
    assert doc["capabilities"] == {"inputTypes": ["text", "audio"], "outputTypes": ["text"]}
    report = doc["variants"][0]["verify"]["projector"]
    assert report["clips"] == 2 and report["min_cosine"] >= 0.99, report  # the verify stage's audio check
    assert files.projector is not None
    _mtmd_loads(files.weights[0], files.projector, vision=False, audio=True)
