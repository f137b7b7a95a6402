"""Session fixtures for the GGUF stage tests: SmolLM2 and MiniLM converted and quantized once per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffbuild.stages.convert import convert_hf_to_gguf
from ffbuild.stages.quantize import quantize_gguf


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="session")
def smollm2_f16(smollm2_hf: Path, gguf_dir: Path) -> Path:
    out = gguf_dir / "smollm2-f16.gguf"
    convert_hf_to_gguf(smollm2_hf, out, "f16")
    return out


@pytest.fixture(scope="session")
def smollm2_f32(smollm2_hf: Path, gguf_dir: Path) -> Path:
    out = gguf_dir / "smollm2-f32.gguf"
    convert_hf_to_gguf(smollm2_hf, out, "f32")
    return out


@pytest.fixture(scope="session")
def smollm2_q8_0(smollm2_f16: Path, gguf_dir: Path) -> Path:
    out = gguf_dir / "smollm2-q8_0.gguf"
    quantize_gguf(smollm2_f16, out, "q8_0")
    return out


@pytest.fixture(scope="session")
def smollm2_q4_k_m(smollm2_f16: Path, gguf_dir: Path) -> Path:
    out = gguf_dir / "smollm2-q4_k_m.gguf"
    quantize_gguf(smollm2_f16, out, "q4_k_m")
    return out


@pytest.fixture(scope="session")
def minilm_f16(minilm_folder: Path, gguf_dir: Path) -> Path:
    out = gguf_dir / "minilm-f16.gguf"
    convert_hf_to_gguf(minilm_folder, out, "f16")
    return out
