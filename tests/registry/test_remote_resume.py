"""A killed pull resumes where it stopped; concurrent pulls fetch each blob once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from remote_testkit import RegistryServer, ThrottledProxy, make_model

from registry.artifact import variants_of
from registry.remote import PullResult, pull, push
from registry.store import Store, sha256_file

pytestmark = pytest.mark.registry

FF = [sys.executable, "-c", "import sys; from ffcli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def pushed(
    registry_server: RegistryServer, tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path
) -> str:
    store = Store(tmp_path_factory.mktemp("resume-src") / "store")
    make_model(store, smollm2_gguf)
    push("smollm2:1", store=store, remote_ref=f"{registry_server.host}/resume/model:1")
    return "resume/model:1"


def _weight(store: Store, ref: str) -> tuple[str, int]:
    v = next(v for v in variants_of(store, ref) if v.name == "q4_1-cpu")
    layers = store.read_json(v.descriptor.digest)["layers"]
    w = next(d for d in layers if d["mediaType"].endswith("weight.v1.raw"))
    return str(w["digest"]), int(w["size"])


def _size(path: Path) -> int:
    """The size of a ``.partial`` seen by a glob a moment ago; 0 once it finished (renamed into the
    store, as the small blobs are while the test polls for the big one)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_killed_pull_resumes(
    registry_server: RegistryServer, pushed: str, tmp_path: Path, smollm2_gguf: Path
) -> None:
    weight_size = smollm2_gguf.stat().st_size
    proxy = ThrottledProxy(registry_server.host, rate=25 * 1024 * 1024)  # ~4 s for the weights
    home = tmp_path / "home"
    env = {**os.environ, "FF_HOME": str(home)}
    remote = f"{proxy.host}/{pushed}"
    try:
        proc = subprocess.Popen(
            [*FF, "pull", remote, "--variant", "q4_1-cpu", "--json"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        ingest = home / "store" / "ingest"
        deadline = time.monotonic() + 60
        partial: Path | None = None
        while time.monotonic() < deadline and proc.poll() is None:
            parts = list(ingest.glob("*.partial")) if ingest.exists() else []
            big = [p for p in parts if _size(p) > 20 * 1024 * 1024]
            if big:
                partial = big[0]
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert partial is not None, f"the pull never got going: {proc.stderr.read() if proc.stderr else ''!r}"
        landed = partial.stat().st_size
        assert 0 < landed < weight_size
        store = Store(home / "store")
        weight_digest = "sha256:" + partial.name.removesuffix(".partial")
        assert not store.has_blob(weight_digest)  # never a half blob under its final name

        before = proxy.downstream_bytes
        out = subprocess.run(
            [*FF, "pull", remote, "--variant", "q4_1-cpu", "--json"], env=env, capture_output=True, text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.splitlines()[-1])
        over_the_wire = proxy.downstream_bytes - before
    finally:
        proxy.close()
    assert result["bytes_resumed"] == landed
    assert result["bytes_downloaded"] == weight_size - landed  # the small blobs were kept from run 1
    assert weight_size - landed <= over_the_wire < weight_size - landed + 64 * 1024  # + headers, manifests
    assert sha256_file(store.blob_path(weight_digest)) == (weight_digest, weight_size)
    assert list(store.ingest.iterdir()) == []
    assert _weight(store, f"{proxy.host}/{pushed}") == (weight_digest, weight_size)


def test_concurrent_pulls_fetch_each_blob_once(
    registry_server: RegistryServer, pushed: str, tmp_path: Path
) -> None:
    proxy = ThrottledProxy(registry_server.host, rate=100 * 1024 * 1024)
    store = Store(tmp_path / "store")
    results: list[PullResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(pull(f"{proxy.host}/{pushed}", store=Store(store.root), variant="q4_1-cpu"))
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        proxy.close()
    assert not errors, errors
    payload = sum(p.stat().st_size for p in store.blobs.iterdir())
    manifests = sum(len(store.read_blob(d.digest)) for _, d in store.tags())
    assert sum(r.bytes_downloaded for r in results) == payload - manifests
    assert sum(r.blobs_fetched for r in results) == 6 and sum(r.blobs_present for r in results) == 12
    assert {r.digest for r in results} == {store.resolve(f"{proxy.host}/{pushed}").digest}


def test_a_bad_partial_file_is_refetched(
    registry_server: RegistryServer, pushed: str, tmp_path: Path, smollm2_gguf: Path
) -> None:
    """A partial that does not belong to the blob (disk error, tampering) costs one retry, not a failure."""
    store = Store(tmp_path / "store")
    digest = "sha256:" + hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    store.partial_path(digest).write_bytes(b"\xff" * 4096)
    result = pull(f"{registry_server.host}/{pushed}", store=store, variant="q4_1-cpu")
    size = smollm2_gguf.stat().st_size
    assert sha256_file(store.blob_path(digest)) == (digest, size)
    # Both attempts are counted: the resumed one (all but the 4096 bad bytes) and the fresh one.
    assert result.bytes_resumed == 0 and 2 * size - 4096 < result.bytes_downloaded < 2 * size
    assert list(store.ingest.iterdir()) == []


def test_broken_connection_resumes_within_one_pull(
    registry_server: RegistryServer, pushed: str, tmp_path: Path, smollm2_gguf: Path
) -> None:
    proxy = ThrottledProxy(registry_server.host, rate=1 << 30, cut_after=30 * 1024 * 1024)
    store = Store(tmp_path / "store")
    try:
        result = pull(f"{proxy.host}/{pushed}", store=store, variant="q4_1-cpu")
    finally:
        proxy.close()
    assert proxy.cuts == 1
    digest = "sha256:" + hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    assert sha256_file(store.blob_path(digest)) == (digest, smollm2_gguf.stat().st_size)
    m = store.read_json(store.resolve(f"{proxy.host}/{pushed}-q4_1-cpu").digest)
    payload = sum(d["size"] for d in [m["config"], *m["layers"]])
    assert result.bytes_resumed == 0 and result.bytes_downloaded == payload  # no byte fetched twice
