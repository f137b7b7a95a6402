"""Speech models: the plan of a CTranslate2 Whisper folder, CTranslate2 types stored by ff, WER verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ffbuild.errors import ModelfilePlanError
from ffbuild.modelfile import parse
from ffbuild.planner import make_plan
from ffbuild.stages.ct2_model import CT2ModelError, read_model, requantize
from ffbuild.stages.verify_speech import word_error_rate

ROOT = Path(__file__).resolve().parents[2]


def _plan(text: str, context: Path) -> object:
    return make_plan(parse(text), context=context)


def test_a_ctranslate2_whisper_folder_plans_transcribe_on_ctranslate2(whisper_folder: Path) -> None:
    plan = make_plan(parse(f"FROM {whisper_folder}\nQUANTIZE int8 float16 float32\n"), context=ROOT)
    assert plan.task == "transcribe" and plan.task_inferred
    assert [(v.name, v.backend, v.family) for v in plan.variants] == [
        ("int8-cpu", "ctranslate2", "speech"),
        ("float16-cpu", "ctranslate2", "speech"),
        ("float32-cpu", "ctranslate2", "speech"),
    ]
    default = make_plan(parse(f"FROM {whisper_folder}\n"), context=ROOT)
    assert [v.quantization for v in default.variants] == ["int8"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("TARGET cpu BACKEND llamacpp", "runs only on ctranslate2"),
        ("QUANTIZE q8_0", "ctranslate2 cannot run q8_0"),
        ("TASK chat", "serves TASK transcribe"),
        ("VERIFY max_wer=-0.1", "negative"),
    ],
)
def test_wrong_speech_plans_are_refused(whisper_folder: Path, extra: str, message: str) -> None:
    with pytest.raises(ModelfilePlanError) as info:
        make_plan(parse(f"FROM {whisper_folder}\n{extra}\n"), context=ROOT)
    assert message in str(info.value) + "".join(str(m) for m in info.value.more)


def test_stored_types_are_ctranslate2s_and_load(whisper_folder: Path, tmp_path: Path) -> None:
    source = read_model(whisper_folder / "model.bin")
    assert source.spec == "WhisperSpec" and source.storage_type() == "float16"
    for quant, weight_type in (("int8", "int8"), ("float32", "float32")):
        out = tmp_path / quant / "model.bin"
        out.parent.mkdir()
        assert requantize(whisper_folder / "model.bin", out, quant) == "float16"
        model = read_model(out)
        name = "encoder/layer_0/ffn/linear_0/weight"
        assert model.dtypes[name] == weight_type
        assert model.variables[name].shape == source.variables[name].shape
        if quant == "int8":  # per-row scales, as CTranslate2's converter writes them
            scale = model.variables[name + "_scale"].astype(np.float32)
            back = model.variables[name].astype(np.float32) / scale[:, None]
            assert np.allclose(back, source.variables[name].astype(np.float32), atol=float(1 / scale.min()))
        else:
            assert np.array_equal(model.variables[name], source.variables[name].astype(np.float32))
        assert model.aliases == source.aliases


def test_a_truncated_model_bin_is_a_clear_error(whisper_folder: Path, tmp_path: Path) -> None:
    cut = tmp_path / "model.bin"
    cut.write_bytes((whisper_folder / "model.bin").read_bytes()[:100_000])
    with pytest.raises(CT2ModelError, match="truncated"):
        read_model(cut)


def test_word_error_rate() -> None:
    assert word_error_rate(["The cat sat."], ["the cat, sat"]) == 0.0
    assert word_error_rate(["a b c d"], ["a x c"]) == 0.5  # one substitution, one deletion
    assert word_error_rate(["a b", "c d"], ["a b", "c d e f"]) == 0.5  # two insertions over four words


def _ff(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ffcli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_ff_show_gives_each_variants_word_error_rate(whisper_home: Path) -> None:
    shown = _ff(whisper_home, "show", "whisper:tiny", "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["task"] == "transcribe" and doc["architecture"] == "whisper"
    wers = {v["variant"]: v["wer"] for v in doc["variants"]}
    assert set(wers) == {"int8-cpu", "float16-cpu", "float32-cpu"}
    assert all(0 <= w <= 0.3 for w in wers.values()), wers
    for v in doc["variants"]:
        report = v["verify"]
        assert report["reference"] == "float32-cpu" and report["clips"] == 4
        assert any("paris" in t.lower() for t in report["transcripts"])
    table = _ff(whisper_home, "show", "whisper:tiny").stdout
    assert "WER" in table.splitlines()[-4]
    row = next(line for line in table.splitlines() if line.startswith("int8-cpu")).split()
    assert float(row[-1]) == pytest.approx(wers["int8-cpu"], abs=1e-3)


def test_verify_max_wer_fails_the_build(whisper_home: Path, whisper_folder: Path, tmp_path: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {whisper_folder}\nQUANTIZE int8\nVERIFY max_wer=0.01\n")
    proc = _ff(whisper_home, "build", "-f", str(mf), "-t", "whisper:strict")
    assert proc.returncode == 3, proc.stderr  # the verify policy's exit code
    assert "word error rate" in proc.stderr and "max_wer 0.01" in proc.stderr
    assert _ff(whisper_home, "show", "whisper:strict").returncode != 0  # nothing was stored


def test_ff_run_prints_the_transcript(whisper_home: Path, paris_wav: Path) -> None:
    proc = _ff(
        whisper_home, "run", "whisper:tiny", "--audio", str(paris_wav), "--local", "--quantize", "int8"
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


@pytest.mark.slow
def test_a_hugging_face_whisper_folder_converts_with_ctranslate2s_converter(
    whisper_folder: Path, paris_wav: Path, tmp_path: Path
) -> None:
    """A random tiny Whisper (HF folder) → int8 and float32 CTranslate2 variants that load and run."""
    import asyncio

    from ffruntime.local import load_files
    from ffruntime.runtime import TranscribeRuntime, TranscriptionRequest
    from ffruntime.settings import LoadSettings
    from registry.artifact import open_variant, variants_of
    from registry.reference import parse_reference
    from registry.store import Store
    from tests.models import CACHE_ROOT, RECIPE, cached_dir, random_whisper, sha256_of

    tokenizer = whisper_folder / "tokenizer.json"
    key = f"whisper-random-hf-{sha256_of(tokenizer)[:16]}-r{RECIPE}"
    hf = cached_dir(key, "whisper-random", lambda d: random_whisper(tokenizer, d))
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {hf}\nQUANTIZE int8 float32\n")  # TASK transcribe inferred from model_type
    home = tmp_path / "home"
    home.mkdir()
    shared = CACHE_ROOT / "whisper-build-cache"  # kept across sessions, as whisper_home's
    shared.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(shared)
    proc = _ff(home, "build", "-f", str(mf), "-t", "random-whisper:1", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    store = Store(home / "store")
    variants = {v.name: v for v in variants_of(store, parse_reference("random-whisper:1"))}
    assert set(variants) == {"int8-cpu", "float32-cpu"}
    for name, weight_type in (("int8-cpu", "int8"), ("float32-cpu", "float32")):
        files = open_variant(store, variants[name].descriptor.digest).files
        assert {"model.bin", "config.json", "tokenizer.json", "vocabulary.json"} <= set(files)
        model = read_model(files["model.bin"])
        assert model.dtypes["encoder/layer_0/ffn/linear_0/weight"] == weight_type

    async def run() -> float:
        rt = await load_files("ctranslate2", files, LoadSettings(threads=2))
        try:
            assert isinstance(rt, TranscribeRuntime)
            info, segments = await rt.transcribe(TranscriptionRequest(audio=paris_wav.read_bytes()))
            [s async for s in segments]  # a random model says nothing sensible: it must only run
            return info.duration
        finally:
            await rt.close()

    assert 4.7 < asyncio.run(run()) < 4.9
