"""The container image: its entrypoint script run as the image runs it (FF_MODELS pulled at start from
docker-registry with htpasswd auth, signature required), answering /health/ready and a chat request;
and the Containerfile's own promises (non-root, probes, the files it copies exist).

podman cannot start containers on these machines (docs/delivery.md, "Container image", says why), so
the entrypoint is tested directly; ``FF_TEST_PODMAN=1`` builds and runs the image where podman works.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from remote_testkit import PASSWORD, USER, RegistryServer

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy/container/entrypoint.sh"
CONTAINERFILE = ROOT / "deploy/container/Containerfile"
pytestmark = [pytest.mark.registry, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ff").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ffcli "$@"\n')
    (bin_dir / "ff").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FF_", "DOCKER_", "COSIGN_"))}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
               DOCKER_CONFIG=str(tmp / "docker"), FF_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def signed_model(auth_registry: RegistryServer, smollm2_gguf: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """(remote ref, cosign.pub, another key's .pub): SmolLM2 built with modelfiles/default, pushed, signed."""
    tmp = tmp_path_factory.mktemp("container-src")
    keys = []
    for name in ("cosign", "other"):
        key = ec.generate_private_key(ec.SECP256R1())
        (tmp / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (tmp / f"{name}.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        keys.append(tmp / f"{name}.pub")
    ref = f"{auth_registry.host}/models/smollm2:1"
    env = _env(tmp, FF_HOME=str(tmp / "ff"), FF_REGISTRY_HOST=auth_registry.host, FF_REGISTRY_USERNAME=USER,
               FF_REGISTRY_PASSWORD=PASSWORD)
    build = ["build", "-f", "modelfiles/default", "-t", "smollm2:1", "--build-arg", f"WEIGHTS={smollm2_gguf}"]
    for args in (build, ["push", "smollm2:1", ref, "-q"], ["sign", ref, "--key", str(tmp / "cosign.key")]):
        out = subprocess.run(["ff", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
    return ref, keys[0], keys[1]


@pytest.fixture
def pod_env(auth_registry: RegistryServer, tmp_path: Path) -> dict[str, str]:
    """What deploy/k8s/deployment.yaml gives the container (credentials from a mounted secret file)."""
    secret = tmp_path / "registry-password"
    secret.write_text(PASSWORD + "\n")
    return _env(tmp_path, FF_HOME=str(tmp_path / "ff"), FF_PORT=str(_free_port()),
                FF_REGISTRY_HOST=auth_registry.host, FF_REGISTRY_USERNAME=USER,
                FF_REGISTRY_PASSWORD_FILE=str(secret), FF_REQUIRE_SIGNATURE="1")


@pytest.fixture
def entrypoint(pod_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"entrypoint-{len(procs)}.log", "wb")  # noqa: SIM115 (closed with the process)
        p = subprocess.Popen([str(ENTRYPOINT)], env={**pod_env, **env}, stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    yield start  # type: ignore[misc]
    for p in procs:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def test_entrypoint_pulls_verified_and_serves(signed_model: tuple[str, Path, Path], pod_env: dict[str, str],
                                              entrypoint: object, tmp_path: Path) -> None:
    ref, pub, _ = signed_model
    proc = entrypoint(FF_MODELS=ref, FF_VERIFY_KEY=str(pub))  # type: ignore[operator]
    url = f"http://127.0.0.1:{pod_env['FF_PORT']}"
    deadline = time.monotonic() + 180
    ready = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            r = httpx.get(url + "/health/ready", timeout=2)
            if r.status_code == 200:
                ready = r.json()
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("entrypoint-*.log"))
    assert ready is not None, logs
    assert ready["models"] == [ref]
    assert httpx.get(url + "/health/live").status_code == 200
    answer = ollama.Client(host=url).chat(model=ref, messages=[{"role": "user", "content": "Name a colour."}])
    assert answer.message.content and answer.message.content.strip()
    assert f"pulling {ref}" in logs


@pytest.mark.parametrize("which", ["other-key", "no-key"])
def test_entrypoint_refuses_unverified(signed_model: tuple[str, Path, Path], pod_env: dict[str, str],
                                       entrypoint: object, which: str) -> None:
    ref, _, other = signed_model
    extra = {"FF_VERIFY_KEY": str(other)} if which == "other-key" else {}
    proc = entrypoint(FF_MODELS=ref, **extra)  # type: ignore[operator]
    assert proc.wait(120) == 6  # ffcli.exitcodes.SIGNATURE: the container stops before serving
    store = Path(pod_env["FF_HOME"]) / "store"
    assert not store.exists() or not [p for p in (store / "blobs").rglob("*") if p.is_file()]


def test_containerfile_promises() -> None:
    text = CONTAINERFILE.read_text().splitlines()
    lines = [ln.strip() for ln in text if ln.strip() and not ln.startswith("#")]
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("0", "root")
    entry = json.loads(next(ln for ln in lines if ln.startswith("ENTRYPOINT ")).split(" ", 1)[1])
    copies = [ln.split()[1:] for ln in lines if ln.startswith("COPY ") and "--from" not in ln]
    assert [str(ENTRYPOINT.relative_to(ROOT)), entry[0]] in copies
    for src, *_ in copies:
        assert (ROOT / src).exists(), src
    health = next(i for i, ln in enumerate(lines) if ln.startswith("HEALTHCHECK"))
    assert "/health/ready" in " ".join(lines[health:health + 2])
    assert os.access(ENTRYPOINT, os.X_OK)


@pytest.mark.skipif(os.environ.get("FF_TEST_PODMAN") != "1" or shutil.which("podman") is None,
                    reason="podman cannot start containers here (docs/delivery.md); FF_TEST_PODMAN=1 runs it")
def test_podman_build_and_run(tmp_path: Path) -> None:  # pragma: no cover - needs a working podman
    tag = "localhost/ferrousforge-serve:test"
    build = ["podman", "build", "-f", str(CONTAINERFILE), "-t", tag, str(ROOT)]
    subprocess.run(build, check=True, timeout=3600)
    out = subprocess.run(["podman", "run", "--rm", "--entrypoint", "ff", tag, "--version"], check=True,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("ff")
    uid = subprocess.run(["podman", "run", "--rm", "--entrypoint", "id", tag, "-u"], check=True,
                         capture_output=True, text=True, timeout=120).stdout.strip()
    assert uid == "10001"


def test_server_pulls_obey_the_signature_policy(
    signed_model: tuple[str, Path, Path], pod_env: dict[str, str], tmp_path: Path
) -> None:
    """The server's own pulls (/api/pull, and pull-on-demand with FF_PULL=1) verify FF_VERIFY_KEY too:
    a model signed by another key is a 403 with nothing stored; the right key pulls and answers."""
    from tests.ffserve.serve_testkit import start_server

    ref, pub, other = signed_model
    env = {k: v for k, v in pod_env.items() if k.startswith(("FF_REGISTRY_", "FF_REQUIRE"))}
    env.update(FF_PULL="1", FF_QUANTIZE="q4_1")  # (a server's pull takes its FF_QUANTIZE as a requirement)
    home = tmp_path / "srv"
    chat = {"model": ref, "stream": False, "options": {"num_predict": 8},
            "messages": [{"role": "user", "content": "Hi"}]}
    with start_server(home, tmp_path, FF_VERIFY_KEY=str(other), **env) as s:
        r = httpx.post(s.url + "/api/pull", json={"model": ref, "stream": False}, timeout=60)
        assert r.status_code == 403 and "verifies with the given key" in r.text, r.text
        r = httpx.post(s.url + "/api/chat", json=chat, timeout=60)
        assert r.status_code == 403, r.text
    assert not [p for p in (home / "store" / "blobs").rglob("*") if p.is_file()]
    with start_server(home, tmp_path, FF_VERIFY_KEY=str(pub), **env) as s:
        r = httpx.post(s.url + "/api/chat", json=chat, timeout=180)
        assert r.status_code == 200 and r.json()["message"]["content"].strip(), r.text
