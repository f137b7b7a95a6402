"""``ff run`` generates locally through llama.cpp from a stored GGUF variant (subprocess, real model)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ffbuild.build import BuildOptions, build
from ffbuild.cache import BuildCache
from ffbuild.plan import BuildPlan, Source, SourceKind, Variant
from ffcli.run import server_answers
from registry.reference import parse_reference
from registry.store import Store

FF = [sys.executable, "-c", "from ffcli import main; main()"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    home = tmp_path_factory.mktemp("ff")
    plan = BuildPlan(
        modelfile=None,
        context=Path("/"),
        source=Source(kind=SourceKind.GGUF_FILE, raw=str(smollm2_gguf), path=smollm2_gguf),
        variants=(Variant(quantization="source", device="cpu", backend="llamacpp", family="gguf"),),
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


def test_run_loads_with_the_context_asked_for(home: Path) -> None:
    """``--num-ctx`` / ``FF_NUM_CTX`` set the context as for ``ff serve``: a longer prompt is refused."""
    long = "Tell me about Paris. " * 20
    for extra, env in ((("--num-ctx", "32"), {}), ((), {"FF_NUM_CTX": "32"})):
        proc = subprocess.run(
            [*FF, "run", "smol:q41", long, "--max-tokens", "4", *extra],
            env={**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9", **env},
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )
        assert proc.returncode == 1 and "context is 32" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert ff(home, "run", "smol:q41", long, "--max-tokens", "4").returncode == 0  # 2048 by default


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_run_goes_through_ff_serve_when_it_answers(home: Path, tmp_path: Path) -> None:
    """With a real `ff serve` at $FF_HOST, `ff run` sends /api/generate there (the server counts it)."""
    port = _free_port()
    env = {**os.environ, "FF_HOME": str(home), "FF_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    env.pop("FF_CONFIG", None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "ffcli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not server_answers(url):
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        run_env = {**os.environ, "FF_HOME": str(tmp_path / "empty-home"), "FF_HOST": f"127.0.0.1:{port}"}
        args = [
            "run",
            "smol:q41",
            "What is the capital of France?",
            "--temperature",
            "0",
            "--max-tokens",
            "24",
        ]
        proc = subprocess.run(
            [*FF, *args], env=run_env, capture_output=True, text=True, timeout=300, cwd=REPO
        )
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.split()) >= 3  # the model is only in the server's store: it came from there
        with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert "/api/generate" in metrics or "generate" in metrics
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
