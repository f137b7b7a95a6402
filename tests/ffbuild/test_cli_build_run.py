"""``ff run`` generates locally through llama.cpp from a stored GGUF variant (subprocess, real model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ffbuild.build import BuildOptions, build
from ffbuild.cache import BuildCache
from ffbuild.plan import BuildPlan, Source, SourceKind, Variant
from registry.reference import parse_reference
from registry.store import Store

FF = [sys.executable, "-c", "from ffbuild.cli import main; main()"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    home = tmp_path_factory.mktemp("ff")
    plan = BuildPlan(
        modelfile=None,
        context=Path("/"),
        source=Source(kind=SourceKind.GGUF_FILE, raw=str(smollm2_gguf), path=smollm2_gguf),
        variants=(Variant(quantization="source", device="cpu", backend="llamacpp"),),
        task="chat",
        system="You are a helpful assistant.",
    )
    build(
        plan,
        parse_reference("smol:q41"),
        store=Store(home / "store"),
        cache=BuildCache(home / "cache"),
        options=BuildOptions(verify=False),
    )
    return home


def ff(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9"}  # nothing listens on port 9
    return subprocess.run([*FF, *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_run_streams_a_greedy_answer(home: Path) -> None:
    args = ("run", "smol:q41", "What is the capital of France?", "--temperature", "0", "--max-tokens", "24")
    first, second = ff(home, *args), ff(home, *args)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.split()) >= 3
    assert first.stdout == second.stdout  # greedy decoding is deterministic


def test_run_errors_without_traceback(home: Path) -> None:
    for args, message in [
        (("run", "missing:latest", "hi"), "not in the store"),
        (("run", "smol:q41", "hi", "--quantize", "q8_0"), "no variant matches"),
    ]:
        proc = ff(home, *args)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
