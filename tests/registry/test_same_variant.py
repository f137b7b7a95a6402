"""``ff run``, ``ff pull`` and ``ff serve`` pick the same variant of a model with f16, q8_0 and q4_k_m.

All three go through ``registry.select.select_variant``; this checks it end to end: ``ff run`` (the real
command, local), ``ff pull`` from a real docker-registry, and the server's name resolution.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from remote_testkit import RegistryServer

from registry.artifact import (
    ArtifactError,
    open_variant,
    variants_of,
)
from registry.store import NotFoundError, Store
from tests.models import add_model

ROOT = Path(__file__).resolve().parents[2]
QUANTS = ("q4_k_m", "f16", "q8_0")


def _pulled(store: Store, ref: str) -> list[str]:
    out = []
    for v in variants_of(store, ref):
        try:
            open_variant(store, v.descriptor.digest)
        except (NotFoundError, ArtifactError):
            continue
        out.append(v.name)
    return out


@pytest.mark.registry
def test_run_pull_and_serve_pick_the_same_variant(
    tmp_path: Path, smollm2_gguf: Path, registry_server: RegistryServer
) -> None:
    from ffserve.models import resolve
    from registry.remote import pull, push

    home = tmp_path / "home"
    store = Store(home / "store")
    add_model(store, "smollm2:3v", {q: smollm2_gguf for q in QUANTS})

    served = resolve(store, "smollm2:3v", target=None, quantize=None).variant.name

    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "ffcli", "run", "--local", "--temperature", "0", "--max-tokens", "2",
         "smollm2:3v", "Hi"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    ran = run.stderr.split("smollm2:3v: variant ", 1)[1].split()[0]

    remote = f"{registry_server.host}/same/smollm2:3v"
    push("smollm2:3v", store=store, remote_ref=remote, insecure=True)
    fresh = Store(tmp_path / "fresh" / "store")
    pull(remote, store=fresh, insecure=True)
    pulled = _pulled(fresh, remote)

    assert served == ran == "f16-cpu"
    assert pulled == ["f16-cpu"]
