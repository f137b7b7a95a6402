"""End to end through the real CLI: ff build → ff push → ff rm + ff prune → ff pull, same digests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from remote_testkit import RegistryServer

pytestmark = pytest.mark.registry

FF = [sys.executable, "-c", "from ffcli import main; main()"]


def _ff(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FF_HOME": str(home), "DOCKER_CONFIG": str(home / "docker")}
    return subprocess.run([*FF, *args], env=env, capture_output=True, text=True, timeout=300)


def _digests(home: Path) -> tuple[set[str], dict[str, str]]:
    index = json.loads((home / "store" / "index.json").read_text())
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
    return {p.name for p in (home / "store" / "blobs" / "sha256").iterdir()}, tags


def test_build_push_rm_pull(registry_server: RegistryServer, smollm2_gguf: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(
        f"FROM {smollm2_gguf}\nSYSTEM You are brief.\nPARAMETER stop \"<|im_end|>\"\nLICENSE Apache-2.0\n"
    )
    built = _ff(home, "build", "-f", str(modelfile), "-t", "smol:1", "--no-verify", "--json")
    assert built.returncode == 0, built.stderr
    blobs, tags = _digests(home)
    assert set(tags) == {"smol:1", "smol:1-q4_1-cpu"}

    remote = f"{registry_server.host}/ff/built:1"
    pushed = _ff(home, "push", "smol:1", remote, "--json")
    assert pushed.returncode == 0, pushed.stderr
    result = json.loads(pushed.stdout.splitlines()[-1])
    assert result["digest"] == tags["smol:1"] and result["blobs_skipped"] == 0
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{remote}-q4_1-cpu"],
        check=True, capture_output=True,
    ).stdout
    assert raw == (home / "store" / "blobs" / "sha256" / tags["smol:1-q4_1-cpu"][7:]).read_bytes()

    assert _ff(home, "rm", "smol:1").returncode == 0
    assert _ff(home, "prune").returncode == 0
    assert _digests(home) == (set(), {})

    pulled = _ff(home, "pull", remote, "--as", "smol:1", "--json")
    assert pulled.returncode == 0, pulled.stderr
    got = json.loads(pulled.stdout.splitlines()[-1])
    assert got["digest"] == tags["smol:1"] and got["variants"] == ["q4_1-cpu"]
    after_blobs, after_tags = _digests(home)
    assert after_blobs == blobs
    assert after_tags == {**tags, remote: tags["smol:1"], f"{remote}-q4_1-cpu": tags["smol:1-q4_1-cpu"]}
    shown = _ff(home, "show", "smol:1")
    assert shown.returncode == 0 and "q4_1-cpu" in shown.stdout and "You are brief." in shown.stdout
