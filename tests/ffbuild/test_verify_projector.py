"""The verify stage's projector check on the tiny random Qwen2-VL and Qwen2-Audio: libmtmd's image (audio)
embeddings of the fixed image set (clips) agree with transformers' vision (audio) tower; ``ff build`` of
the folder reports the figure on every GGUF variant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ffbuild.stages.verify.projector import MIN_COSINE, fixed_clips, fixed_images, verify_projector

pytestmark = pytest.mark.slow


def test_projector_agrees_with_the_vision_tower(qwen2vl_hf: Path, qwen2vl_ggufs: tuple[Path, Path]) -> None:
    model, projector = qwen2vl_ggufs
    report = verify_projector(qwen2vl_hf, model, projector, threads=1)
    assert "error" not in report, report
    assert report["images"] == len(fixed_images()) == 3 and report["tokens"] == [9, 9, 9]
    low = report["min_cosine"]
    assert isinstance(low, float) and MIN_COSINE <= low <= 1.0001, report


def test_a_projector_of_other_weights_is_reported(qwen2vl_hf: Path, qwen2vl_ggufs: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    """The same architecture with other random weights: the check sees they disagree."""
    from tests.models import random_qwen2vl

    other = tmp_path / "other"
    other.mkdir()
    random_qwen2vl(qwen2vl_hf, other, seed=7)
    model, projector = qwen2vl_ggufs
    report = verify_projector(other, model, projector, threads=1)
    low = report["min_cosine"]
    assert isinstance(low, float) and low < MIN_COSINE, report


def test_build_reports_the_projector_cosine(qwen2vl_hf: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (tmp_path / "Modelfile").write_text(f"FROM {qwen2vl_hf}\nQUANTIZE q8_0\n")
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9"}
    ff = [sys.executable, "-c", "from ffcli import main; main()"]
    built = subprocess.run([*ff, "build", "-f", str(tmp_path / "Modelfile"), "-t", "vlm:v"], env=env,
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr
    shown = json.loads(subprocess.run([*ff, "show", "vlm:v", "--json"], env=env, capture_output=True,
                                      text=True, timeout=120).stdout)
    reports = [v["verify"] for v in shown["variants"]]
    assert reports and all(r["projector"]["min_cosine"] >= MIN_COSINE for r in reports), reports


def test_audio_projector_agrees_with_the_audio_tower(qwen2audio_hf: Path, qwen2audio_ggufs: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    """Each fixed clip is one 30 s window (750 tokens); an f16 projector stays within the bound, and the
    same architecture with other random weights does not."""
    from tests.models import random_qwen2audio

    model, projector = qwen2audio_ggufs
    report = verify_projector(qwen2audio_hf, model, projector, threads=1)
    assert "error" not in report, report
    assert report["clips"] == len(fixed_clips()) == 2 and report["tokens"] == [750, 750]
    low = report["min_cosine"]
    assert isinstance(low, float) and MIN_COSINE <= low <= 1.0001, report
    other = tmp_path / "other"
    random_qwen2audio(qwen2audio_hf, other, seed=7)
    low = verify_projector(other, model, projector, threads=1)["min_cosine"]
    assert isinstance(low, float) and low < MIN_COSINE, low
