"""``ff run``, ``ff pull``, ``ff serve``, ``/api/show`` and ``ff export`` pick the same variant of a model
with f16, q8_0 and q4_k_m, for the same preferences, and refuse alike when no variant matches them.

All five go through ``registry.select`` (``select_variant``, or ``select_stored`` for the store); this
checks it end to end: ``ff run`` (the real command, local), ``ff pull`` from a real docker-registry, the
server's name resolution, ``/api/show`` of the real app and ``ff export --dir``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from remote_testkit import RegistryServer
from starlette.testclient import TestClient

from registry.artifact import (
    ArtifactError,
    open_variant,
    variants_of,
)
from registry.select import SelectionError
from registry.store import NotFoundError, Store
from tests.models import add_model

ROOT = Path(__file__).resolve().parents[2]
QUANTS = ("q4_k_m", "f16", "q8_0")
REF = "smollm2:3v"
REFUSED = "no variant matches"


def _pulled(store: Store, ref: str) -> list[str]:
    out = []
    for v in variants_of(store, ref):
        try:
            open_variant(store, v.descriptor.digest)
        except (NotFoundError, ArtifactError):
            continue
        out.append(v.name)
    return out


def _flags(prefs: dict[str, str]) -> list[str]:
    return [arg for key, value in prefs.items() for arg in (f"--{key}", value)]


def _served(store: Store, prefs: dict[str, str]) -> str:
    from ffserve.errors import ServeError
    from ffserve.models import resolve

    try:
        return resolve(store, REF, target=prefs.get("target"), quantize=prefs.get("quantize")).variant.name
    except ServeError as exc:
        assert exc.status == 400, exc.message
        return exc.message


def _shown(store: Store, prefs: dict[str, str]) -> str:
    from ffserve.app import create_app
    from ffserve.settings import Settings

    app = create_app(Settings(target=prefs.get("target"), quantize=prefs.get("quantize")), store)
    client = TestClient(app)
    answer = client.post("/api/show", json={"model": REF})
    # /api/tags lists the model all the same, with the details of the variant served (none: empty)
    (listed,) = [m for m in client.get("/api/tags").json()["models"] if m["name"] == REF]
    if answer.status_code == 400:
        assert listed["details"]["quantization_level"] == "" and listed["size"] == 0
        return str(answer.json()["error"])
    assert answer.status_code == 200, answer.text
    assert listed["details"]["quantization_level"] == answer.json()["details"]["quantization_level"] != ""
    return str(answer.json()["variant"])


def _ran(home: Path, prefs: dict[str, str]) -> str:
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "ffcli", "run", "--local", "--temperature", "0", "--max-tokens", "2",
         *_flags(prefs), REF, "Hi"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    if run.returncode != 0:
        return run.stderr
    return run.stderr.split(f"{REF}: variant ", 1)[1].split()[0]


def _exported(home: Path, out: Path, prefs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    from ffcli import main

    monkeypatch.setenv("FF_HOME", str(home))
    done = CliRunner().invoke(main, ["export", REF, "--dir", str(out), "--json", *_flags(prefs)])
    if done.exit_code != 0:
        return done.output
    return str(json.loads(done.output)["variant"])


def _pulled_as(remote: str, store: Store, prefs: dict[str, str]) -> str:
    from registry.remote import pull

    try:
        pull(remote, store=store, insecure=True, target=prefs.get("target"), quantize=prefs.get("quantize"))
    except SelectionError as exc:
        return str(exc)
    (name,) = _pulled(store, remote)
    return name


@pytest.mark.registry
@pytest.mark.parametrize(
    ("prefs", "expected"),
    [
        ({}, "f16-cpu"),  # no preference: what fits this machine, highest precision first
        ({"quantize": "q8_0"}, "q8_0-cpu"),
        ({"target": "cpu", "quantize": "q4_k_m"}, "q4_k_m-cpu"),
        ({"quantize": "q4_0"}, None),  # a preference no variant has: every caller refuses, listing them
        ({"target": "cuda"}, None),
    ],
)
def test_run_pull_serve_show_and_export_pick_the_same_variant(
    tmp_path: Path,
    smollm2_gguf: Path,
    registry_server: RegistryServer,
    monkeypatch: pytest.MonkeyPatch,
    prefs: dict[str, str],
    expected: str | None,
) -> None:
    from registry.remote import push

    home = tmp_path / "home"
    store = Store(home / "store")
    add_model(store, REF, {q: smollm2_gguf for q in QUANTS})
    remote = f"{registry_server.host}/same/{tmp_path.name}/{REF}"
    push(REF, store=store, remote_ref=remote, insecure=True)

    picks = {
        "serve": _served(store, prefs),
        "show": _shown(store, prefs),
        "run": _ran(home, prefs),
        "export": _exported(home, tmp_path / "export", prefs, monkeypatch),
        "pull": _pulled_as(remote, Store(tmp_path / "fresh" / "store"), prefs),
    }
    if expected is not None:
        assert picks == dict.fromkeys(picks, expected)
    else:
        assert all(REFUSED in said and "f16-cpu" in said for said in picks.values()), picks
