"""Fixtures for the server tests: real models in a real store, and a real ``ff serve`` subprocess.

The q8_0 SmolLM2 is made from the Q4_1 GGUF with llama.cpp's own quantizer (``allow_requantize``) and
cached under ~/.cache/ferrousforge-tests, keyed by the source's digest. Most tests share one server
(session scope); tests that need other settings start their own with :func:`start_server`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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

from registry.artifact import layer, tag_model, write_index, write_variant
from registry.modelpack import ModelConfig, ModelDescriptor, ModelFS, ModelPackConfig
from registry.oci import (
    ANN_BACKEND,
    ANN_FORMAT,
    ANN_QUANTIZATION,
    ANN_TARGET,
    ANN_TASK,
    ANN_VARIANT,
    FF_PARAMS,
    FF_SYSTEM,
    FF_TEMPLATE,
    MODEL_DOC,
    MODEL_WEIGHT,
)
from registry.store import Store

CACHE = Path.home() / ".cache" / "ferrousforge-tests" / "ffserve"
ROOT = Path(__file__).resolve().parents[2]
Q8_0 = 7  # LLAMA_FTYPE_MOSTLY_Q8_0


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def smollm2_q8_gguf(smollm2_gguf: Path) -> Path:
    """SmolLM2 at q8_0, requantized from the Q4_1 file by llama.cpp (cached by content)."""
    out = CACHE / f"smollm2-{_digest(smollm2_gguf)}-q8_0.gguf"
    if not out.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        code = (
            "import ctypes, sys, llama_cpp\n"
            "p = llama_cpp.llama_model_quantize_default_params()\n"
            f"p.ftype = {Q8_0}; p.allow_requantize = True; p.nthread = 2\n"
            "a, b = (x.encode() for x in sys.argv[1:3])\n"
            "sys.exit(llama_cpp.llama_model_quantize(a, b, ctypes.byref(p)))\n"
        )
        cmd = [sys.executable, "-c", code, str(smollm2_gguf), str(tmp)]
        subprocess.run(cmd, check=True, capture_output=True)
        os.replace(tmp, out)
    assert out.stat().st_size > smollm2_gguf.stat().st_size
    return out


def add_model(
    store: Store,
    ref: str,
    variants: dict[str, Path],
    *,
    params: dict[str, object] | None = None,
    template: str | None = None,
    system: str | None = None,
    task: str = "chat",
) -> None:
    """Write a model (one variant per quantization → GGUF file) the way ``ff build`` lays it out."""
    descs = []
    for quant, path in sorted(variants.items()):
        layers = [layer(store, MODEL_WEIGHT, "model.gguf", file=path)]
        if params:
            layers.append(layer(store, FF_PARAMS, "params.json", data=json.dumps(params).encode()))
        if template:
            layers.append(layer(store, FF_TEMPLATE, "template.txt", data=template.encode()))
        if system:
            layers.append(layer(store, FF_SYSTEM, "system.txt", data=system.encode()))
        layers.append(layer(store, MODEL_DOC, "LICENSE", data=b"Apache-2.0"))
        config = ModelPackConfig(
            descriptor=ModelDescriptor(name=ref.split(":")[0]),
            config=ModelConfig(
                architecture="llama", format="gguf", param_size="135M", quantization=quant
            ),
            modelfs=ModelFS(diff_ids=[d.digest for d in layers]),
        )
        ann = {
            ANN_VARIANT: f"{quant}-cpu",
            ANN_TARGET: "cpu",
            ANN_BACKEND: "llamacpp",
            ANN_FORMAT: "gguf",
            ANN_QUANTIZATION: quant,
            ANN_TASK: task,
        }
        descs.append(write_variant(store, config, layers, ann))
    tag_model(store, ref, write_index(store, descs))


@pytest.fixture(scope="session")
def ff_home(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, smollm2_q8_gguf: Path) -> Path:
    """FF_HOME with ``smollm2:latest`` (q8_0 + q4_1 variants, greedy by default) and ``tiny:latest``
    (q4_1 with a Go TEMPLATE and SYSTEM prompt)."""
    home = tmp_path_factory.mktemp("ffhome")
    store = Store(home / "store")
    add_model(store, "smollm2:latest", {"q8_0": smollm2_q8_gguf, "q4_1": smollm2_gguf},
              params={"temperature": 0.0, "stop": ["<|im_end|>"]})
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
        "FF_NUM_THREADS": "2",
        "FF_QUANTIZE": "q8_0",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    full_env.pop("FF_CONFIG", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ffserve", "serve", "--port", str(port)],
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
