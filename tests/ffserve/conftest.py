"""Fixtures for the server tests: real models in a real store, and a real ``ff serve`` subprocess.

``smollm2:latest`` is what ``ff build`` makes of the SmolLM2 Hugging Face folder (the shared
``smollm2_hf`` fixture): q8_0 and q4_k_m variants, as a user would build it. Most tests share one server
(session scope); tests that need other settings start their own with :func:`start_server`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from registry.store import Store
from tests.models import add_model

CACHE = Path.home() / ".cache" / "ferrousforge-tests" / "ffserve"
ROOT = Path(__file__).resolve().parents[2]


def build_smollm2(home: Path, smollm2_hf: Path) -> None:
    """``ff build`` SmolLM2 from its Hugging Face folder into ``home``: q8_0 and q4_k_m variants, greedy."""
    modelfile = home / "smollm2.Modelfile"
    modelfile.write_text(
        f"FROM {smollm2_hf}\nQUANTIZE q8_0 q4_k_m\nTASK chat\n"
        "PARAMETER temperature 0\nPARAMETER stop <|im_end|>\n",
        encoding="utf-8",
    )
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9"}
    cmd = [sys.executable, "-c", "from ffcli import main; main()", "build", "-f", str(modelfile)]
    cmd += ["-t", "smollm2:latest"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"ff build failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="session")
def ff_home(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, smollm2_hf: Path) -> Path:
    """FF_HOME with ``smollm2:latest`` built by ``ff build`` from the HF folder (q8_0 + q4_k_m variants,
    greedy by default) and ``tiny:latest`` (the shipped Q4_1 with a Go TEMPLATE and SYSTEM prompt)."""
    home = tmp_path_factory.mktemp("ffhome")
    build_smollm2(home, smollm2_hf)
    store = Store(home / "store")
    add_model(
        store,
        "tiny:latest",
        {"q4_1": smollm2_gguf},
        params={"temperature": 0.0, "num_predict": 24},
        template="<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"
        "<|im_start|>assistant\n",
        system="You always answer in French.",
    )
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics", headers=self.headers()).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                head = line.split(" ")[0]
                if head.split("{")[0] == name:
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def headers(self) -> dict[str, str]:
        return {}

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def start_server(home: Path, tmp: Path, **env: str) -> Iterator[Server]:
    port = free_port()
    log = tmp / f"serve-{port}.log"
    full_env = {
        **os.environ,
        "FF_HOME": str(home),
        "FF_NUM_THREADS": "1",
        "FF_QUANTIZE": "q8_0",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    full_env.pop("FF_CONFIG", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ffcli", "serve", "--port", str(port)],
            env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"ff serve exited with {proc.returncode}:\n{server.logs()}")
            try:
                if httpx.get(server.url + "/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"ff serve did not start:\n{server.logs()}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server(ff_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with start_server(ff_home, tmp_path_factory.mktemp("logs"), FF_MAX_QUEUE="4") as s:
        yield s


@pytest.fixture(scope="session")
def curl() -> str:
    exe = shutil.which("curl")
    if exe is None:
        pytest.fail("curl is not installed (apt-get install curl)")
    return exe
