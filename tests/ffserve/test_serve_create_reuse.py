"""``/api/create`` FROM a stored model, by the unmodified ``ollama`` client, on a store that has no build
cache (as after ff's code changed): unchanged weights keep the verify reports ff stored with them
(nothing is measured), changed weights (a new adapter) are verified as before, and reports that came
with a pull (not marked as measured here) are measured again."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from registry.artifact import open_variant, variants_of
from registry.store import Store
from tests.ffserve.serve_testkit import Server, ff_build, start_server

SYSTEM = "You are a helpful assistant. You always answer in one short sentence."
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
CARRIED = "weights unchanged, the stored variant's report"


@pytest.fixture(scope="module")
def home(ff_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared store as hard links (blobs are never written in place), and no build cache."""
    out = tmp_path_factory.mktemp("reuse-home")
    shutil.copytree(ff_home / "store", out / "store", copy_function=os.link, ignore=_locks)
    return out


def _locks(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "locks" or n.startswith(".tmp-")]


@pytest.fixture(scope="module")
def srv(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with start_server(home, tmp_path_factory.mktemp("reuse-logs")) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv: Server) -> ollama.Client:
    return ollama.Client(host=srv.url, timeout=600)


def _measured(home: Path) -> list[str]:
    """The verify reports this home's build cache holds: one per measurement made."""
    folder = home / "cache" / "verify"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def _reports(home: Path, name: str) -> dict[str, tuple[str, dict[str, object]]]:
    """variant name → (weight blob digest, verify report) of a stored model."""
    store = Store(home / "store")
    out: dict[str, tuple[str, dict[str, object]]] = {}
    for v in variants_of(store, name):
        files = open_variant(store, v.descriptor.digest)
        out[v.name] = (files.weights[0].name, files.verify)
    return out


def test_a_new_system_prompt_keeps_the_stored_reports(client: ollama.Client, home: Path) -> None:
    start = time.monotonic()
    events = list(client.create(model="brief", from_="smollm2", system=SYSTEM, stream=True))
    seconds = time.monotonic() - start
    print(f"create FROM smollm2 with a SYSTEM: {seconds:.2f} s")
    assert events[-1].status == "success", events
    carried = [e.status for e in events if CARRIED in (e.status or "")]
    assert len(carried) == 2, [e.status for e in events]  # q8_0 and q4_k_m
    assert _measured(home) == []  # verify measured nothing
    theirs, mine = _reports(home, "smollm2"), _reports(home, "brief")
    assert mine == theirs and set(mine) == {"q8_0-cpu", "q4_k_m-cpu"}
    # the reports still compare against the f16 smollm2 was converted to (measured again here, the
    # q8_0 would be its own reference, agreement 1.0)
    assert {r["reference"] for _, r in mine.values()} == {"f16"}
    answer = client.chat(model="brief", messages=QUESTION).message.content or ""
    assert "Paris" in answer


def test_a_new_adapter_is_verified(client: ollama.Client, home: Path, smollm2_lora_gguf: Path) -> None:
    before = _measured(home)
    lora = {"adapter.gguf": client.create_blob(smollm2_lora_gguf)}
    events = list(client.create(model="tuned", from_="smollm2", adapters=lora, stream=True))
    assert events[-1].status == "success", events
    assert not any(CARRIED in (e.status or "") for e in events), [e.status for e in events]
    assert len(_measured(home)) == len(before) + 2  # both variants measured with the adapter
    reports = _reports(home, "tuned")
    assert all(r.get("adapters") for _, r in reports.values()), reports
    assert {w for w, _ in reports.values()} == {w for w, _ in _reports(home, "smollm2").values()}


def test_a_report_that_came_with_a_pull_is_measured_again(ff_home: Path, tmp_path: Path) -> None:
    """The same store without the marks ff's own verify leaves (as after ``ff pull``, whose verify.json is
    the pusher's claim): a build FROM it measures the variants itself."""
    home = tmp_path / "pulled"
    shutil.copytree(ff_home / "store", home / "store", copy_function=os.link,
                    ignore=lambda d, n: [*_locks(d, n), *(x for x in n if x == "measured")])
    ff_build(home, f"FROM smollm2\nSYSTEM {SYSTEM}\n", "brief-pulled:latest")
    assert len(_measured(home)) == 2  # q8_0 and q4_k_m, measured here
    store = Store(home / "store")
    for v in variants_of(store, "brief-pulled"):  # now marked: a further build FROM it may carry them
        report = open_variant(store, v.descriptor.digest).files["verify.json"]
        assert store.measured_here("sha256:" + report.name)
