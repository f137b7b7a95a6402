"""A real ``ff serve`` subprocess for tests: :func:`start_server` and the :class:`Server` handle.

A module of its own (not the conftest) so test modules can import it by a name no other test folder
uses.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

CACHE = Path.home() / ".cache" / "ferrousforge-tests" / "ffserve"
ROOT = Path(__file__).resolve().parents[2]


def ff_build(home: Path, modelfile: str, tag: str, *flags: str) -> None:
    """``ff build`` the Modelfile text into ``FF_HOME`` ``home`` as ``tag`` (a subprocess, as users run)."""
    path = home / f"{tag.replace(':', '_')}.Modelfile"
    path.write_text(modelfile, encoding="utf-8")
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9"}
    cmd = [sys.executable, "-c", "from ffcli import main; main()", "build", "-f", str(path), "-t", tag]
    cmd += flags
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"ff build failed:\n{proc.stdout}\n{proc.stderr}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    grpc: str | None = None  # host:port of the Open Inference Protocol over gRPC, when started with it

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
def start_server(home: Path, tmp: Path, *, grpc: bool = False, **env: str) -> Iterator[Server]:
    """``ff serve`` on a free port (``grpc``: with FF_GRPC_PORT on another), ready when this yields."""
    port = free_port()
    grpc_port = free_port() if grpc else None
    if grpc_port is not None:
        env = {**env, "FF_GRPC_PORT": str(grpc_port)}
    log = tmp / f"serve-{port}.log"
    full_env = {
        **os.environ,
        "FF_HOME": str(home),
        "FF_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    full_env.pop("FF_CONFIG", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ffcli", "serve", "--port", str(port)],
            env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log, f"127.0.0.1:{grpc_port}" if grpc_port else None)
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
