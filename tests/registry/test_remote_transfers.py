"""Model-sized transfers against Debian's docker-registry: several blobs at once, chunked uploads that
resume after the pusher is killed, pulls that resume in parallel ranges, cross-repository mounts, and
registries that cap request bodies (as ECR does). Blobs are tens of MB with small chunk settings."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import requests
from remote_testkit import CountingProxy, RegistryServer, ThrottledProxy, make_random_model

from registry.remote import pull, push
from registry.store import Store, sha256_file
from registry.transfer import MiB, TransferOptions, parse_size

pytestmark = pytest.mark.registry

FF = [sys.executable, "-c", "import sys; from ffcli import main; sys.exit(main())"]
BIG = 32 * MiB


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FF_HOME whose store holds ``weights:1``: one 32 MiB layer and two small ones."""
    root = tmp_path_factory.mktemp("transfers-home")
    make_random_model(Store(root / "store"), [BIG, 3 * MiB, 200 * 1024])
    return root


def _weights(store: Store) -> dict[str, int]:
    return {"sha256:" + p.name: p.stat().st_size for p in store.blobs.iterdir() if p.stat().st_size >= MiB}


def _big_digest(store: Store) -> str:
    return next(d for d, n in _weights(store).items() if n == BIG)


def _kill_when(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], sig: int = signal.SIGKILL, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    if proc.poll() is not None:
        why = proc.stderr.read() if proc.stderr else b""
        pytest.fail(f"finished before it could be killed: {why!r}")
    os.kill(proc.pid, sig)
    proc.wait(30)


def test_options_and_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_size("10MiB") == parse_size("10M") == 10 * MiB and parse_size("10MB") == 10_000_000
    assert parse_size(" 4096 ") == 4096
    with pytest.raises(ValueError):
        parse_size("ten")
    monkeypatch.setenv("FF_TRANSFER_JOBS", "3")
    monkeypatch.setenv("FF_CHUNK_SIZE", "8MiB")
    opts = TransferOptions.from_env(jobs=None, range_parts=2)
    assert (opts.jobs, opts.chunk_size, opts.range_parts) == (3, 8 * MiB, 2)
    monkeypatch.setenv("FF_TRANSFER_JOBS", "0")
    with pytest.raises(ValueError, match=r"1\.\.64"):
        TransferOptions.from_env()


def _push_killed_then(
    server: RegistryServer, home: Path, repo: str, sig: int, stopped: Callable[[], None] = lambda: None
) -> tuple[int, dict[str, Any]]:
    """``ff push`` through a slow transparent proxy, sent ``sig`` once 60% of the big blob has gone,
    ``stopped()`` once it has exited, then run again; returns (request bytes of the second run, its
    result line)."""
    proxy = ThrottledProxy(server.host, rate=1 << 30, up_rate=24 * MiB)
    remote = f"{proxy.host}/{repo}:1"
    env = {**os.environ, "FF_HOME": str(home), "FF_CHUNK_SIZE": "2MiB", "FF_TRANSFER_JOBS": "1"}
    try:
        proc = subprocess.Popen([*FF, "push", "weights:1", remote, "--json"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _kill_when(proc, lambda: proxy.upstream_bytes > 0.6 * BIG, sig)  # the big blob goes first
        r = requests.get(f"http://{server.host}/v2/{repo}/manifests/1", timeout=10)
        assert r.status_code == 404  # nothing was tagged: no partial artifact
        stopped()
        before = proxy.upstream_bytes
        out = subprocess.run([*FF, "push", "weights:1", remote, "--json"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        again = proxy.upstream_bytes - before
    finally:
        proxy.close()
    store = Store(home / "store")
    assert list(store.ingest.glob("*.upload-*.json")) == []
    return again, json.loads(out.stdout.splitlines()[-1])


def _registry_uploads(server: RegistryServer, repo: str) -> dict[str, int]:
    """The registry's own upload sessions of ``repo``: session id -> bytes it holds (its
    ``_uploads/<id>/data``)."""
    root = server.storage / "docker/registry/v2/repositories" / repo / "_uploads"
    return {p.parent.name: p.stat().st_size for p in root.glob("*/data")}


_PATCH_LOG = re.compile(
    r'msg="response completed".*http\.request\.method=PATCH .*http\.request\.uri="/v2/(?P<repo>[^"]+)'
    r'/blobs/uploads/(?P<id>[0-9a-f-]+)\?_state=(?P<state>[^"&]+)".*http\.response\.status=202'
)


def _registry_patches(log: str, repo: str) -> list[tuple[str, int]]:
    """(session id, offset) of each ``PATCH`` the registry accepted for ``repo``, in its log's order; the
    offset is the one the registry signed into the request's ``_state`` (HMAC, then JSON)."""
    found = []
    for m in _PATCH_LOG.finditer(log):
        if m["repo"] != repo:
            continue
        raw = base64.urlsafe_b64decode(unquote(m["state"]) + "==")
        found.append((m["id"], int(json.loads(raw[32:])["Offset"])))  # after the HMAC-SHA256
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_push_stopped_by_a_signal_resumes_from_the_registrys_offset(
    registry_server: RegistryServer, home: Path, tmp_path: Path, sig: int
) -> None:
    """SIGTERM or SIGINT mid-blob (what CI runners and the kubelet send first): ff ends after the chunk
    in flight, keeping the session URL; the rerun asks the registry for the offset (GET on the session)
    and sends less than half the 32 MiB blob again. Counted on both sides: the proxy's request bytes,
    and the registry's own — the bytes in its upload file after the stop, and the offsets it signed
    into the rerun's ``PATCH`` requests."""
    repo = f"resume/{signal.Signals(sig).name.lower()}"
    state: dict[str, int] = {}
    again, result = _push_killed_then(
        registry_server, home, repo, sig, lambda: state.update(_registry_uploads(registry_server, repo))
    )
    store = Store(home / "store")
    big = _big_digest(store)
    small = sum(n for d, n in _weights(store).items() if d != big) + 256 * 1024  # + headers, manifests
    [(session, held)] = state.items()  # only the big blob was in flight (1 job, largest first)
    assert 0.6 * BIG <= held < BIG and held % (2 * MiB) == 0  # whole chunks: none was cut off
    assert result["bytes_resumed"] == held
    assert again < BIG / 2 + small, f"{again} bytes sent again"
    # The registry took each 2 MiB chunk of that one session exactly once over both runs: up to
    # ``held`` before the stop, the rest (BIG - held bytes) in the rerun.
    offsets = [o for s, o in _registry_patches(registry_server.log_text(), repo) if s == session]
    assert offsets == list(range(0, BIG, 2 * MiB))
    assert _registry_uploads(registry_server, repo) == {}  # committed
    assert registry_server.blob_data(big).stat().st_size == BIG
    dst = Store(tmp_path / "store")
    pull(f"{registry_server.host}/{repo}:1", store=dst, all_variants=True)
    assert sha256_file(dst.blob_path(big)) == (big, BIG)


def test_push_killed_outright_still_completes(
    registry_server: RegistryServer, home: Path, tmp_path: Path
) -> None:
    """SIGKILL mid-chunk: distribution 2.8 invalidates the session (the chunk was cut off, or landed
    after its answer was lost); the rerun notices (404 on the session) and uploads the blob anew."""
    _, result = _push_killed_then(registry_server, home, "resume/kill", signal.SIGKILL)
    assert result["blobs_uploaded"] + result["blobs_skipped"] == 4  # 3 layers and the config
    dst = Store(tmp_path / "store")
    pull(f"{registry_server.host}/resume/kill:1", store=dst, all_variants=True)
    assert _weights(dst) == _weights(Store(home / "store"))


@pytest.mark.parametrize("cut", [MiB // 2, MiB], ids=["chunk-cut-off", "whole-chunk-answer-lost"])
def test_distribution_drops_a_session_whose_chunk_was_cut(registry_server: RegistryServer, cut: int) -> None:
    """Why a SIGKILLed push starts its blob over (docs/registry.md): after a ``PATCH`` whose body was
    cut off, or that arrived whole but whose answer (the next signed ``_state``) was never read, the
    only state the client holds names an offset the registry's upload file no longer has, and the
    registry cancels the session on the next request — the ``GET`` a resuming client asks with."""
    base, repo = f"http://{registry_server.host}", f"probe/{cut}"
    body = os.urandom(2 * MiB)
    r = requests.post(f"{base}/v2/{repo}/blobs/uploads/", timeout=10)
    r = requests.patch(urljoin(base, r.headers["Location"]), data=body[:MiB], timeout=10,
                       headers={"Content-Range": f"0-{MiB - 1}", "Content-Type": "application/octet-stream"})
    assert r.status_code == 202 and r.headers["Range"] == f"0-{MiB - 1}"
    state = urljoin(base, r.headers["Location"])  # what ff records after each chunk
    assert requests.get(state, timeout=10).status_code == 204  # the session answers its offset
    url = urlsplit(state)
    head = (f"PATCH {url.path}?{url.query} HTTP/1.1\r\nHost: {registry_server.host}\r\n"
            f"Content-Length: {MiB}\r\nContent-Range: {MiB}-{2 * MiB - 1}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n")
    with socket.create_connection(("127.0.0.1", int(registry_server.host.rsplit(":", 1)[1]))) as sock:
        sock.sendall(head.encode() + body[MiB : MiB + cut])  # then the pusher dies: the socket closes
    deadline = time.monotonic() + 10
    while _registry_uploads(registry_server, repo) != {url.path.rsplit("/", 1)[1]: MiB + cut}:
        assert time.monotonic() < deadline, _registry_uploads(registry_server, repo)
        time.sleep(0.05)
    r = requests.get(state, timeout=10)
    assert r.status_code == 404 and "BLOB_UPLOAD_INVALID" in r.text
    assert f"upload resumed at wrong offest: {MiB + cut} != {MiB}" in registry_server.log_text()
    assert requests.get(state.split("?")[0], timeout=10).status_code == 404  # no _state: no way in


def test_killed_parallel_range_pull_resumes(
    registry_server: RegistryServer, home: Path, tmp_path: Path
) -> None:
    push("weights:1", store=Store(home / "store"), remote_ref=f"{registry_server.host}/resume/ranges:1")
    proxy = ThrottledProxy(registry_server.host, rate=4 * MiB)  # per connection: 4 ranges, ~16 MiB/s
    remote = f"{proxy.host}/resume/ranges:1"
    pull_home = tmp_path / "home"
    env = {**os.environ, "FF_HOME": str(pull_home), "FF_RANGE_PARTS": "4", "FF_RANGE_MIN": "4MiB"}
    big = _big_digest(Store(home / "store"))
    record = Store(pull_home / "store").ranges_path(big)

    def landed() -> int:
        try:
            return sum(s[1] - s[0] for s in json.loads(record.read_bytes())["ranges"])
        except (OSError, ValueError, KeyError):
            return 0

    try:
        proc = subprocess.Popen([*FF, "pull", remote, "--all-variants", "--json"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _kill_when(proc, lambda: landed() > 0.6 * BIG)
        spans = json.loads(record.read_bytes())["ranges"]
        assert len(spans) == 4 and all(s[1] > s[0] for s in spans)  # the four ranges ran at once
        store = Store(pull_home / "store")
        assert not store.has_blob(big)
        before = proxy.downstream_bytes
        out = subprocess.run([*FF, "pull", remote, "--all-variants", "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.splitlines()[-1])
        again = proxy.downstream_bytes - before
    finally:
        proxy.close()
    assert result["bytes_resumed"] > 0.6 * BIG
    others = 3 * MiB + 200 * 1024 + 64 * 1024
    assert again < BIG / 2 + others, f"{again} bytes fetched again"
    assert sha256_file(store.blob_path(big)) == (big, BIG)
    assert list(store.ingest.iterdir()) == []


def test_second_repository_mounts_every_blob(registry_server: RegistryServer, home: Path) -> None:
    store = Store(home / "store")
    proxy = CountingProxy(registry_server.host)
    try:
        first = push("weights:1", store=store, remote_ref=f"{proxy.host}/mount/a:1")
        before = proxy.uploaded()
        second = push("weights:1", store=store, remote_ref=f"{proxy.host}/mount/b:1")
        again = proxy.uploaded() - before
    finally:
        proxy.close()
    assert first.blobs_mounted == 0 and before >= BIG
    assert again == 0
    assert second.bytes_uploaded == 0 and second.blobs_uploaded == 0 and second.blobs_mounted == 4
    assert any("mount=" in path for m, path, st in proxy.requests if m == "POST" and st == 201)
    dst = Store(home.parent / "mount-check")
    got = pull(f"{registry_server.host}/mount/b:1", store=dst, all_variants=True)
    assert got.blobs_fetched == 4 and _weights(dst) == _weights(store)


def test_pull_records_where_blobs_live(registry_server: RegistryServer, home: Path, tmp_path: Path) -> None:
    """Pulled from repo a, pushed to repo c: mounted from a, no weight byte sent."""
    push("weights:1", store=Store(home / "store"), remote_ref=f"{registry_server.host}/mount/a:1")
    store = Store(tmp_path / "store")
    pull(f"{registry_server.host}/mount/a:1", store=store, all_variants=True, local_name="w:1")
    assert store.blob_sources(_big_digest(store), registry_server.host) == ["mount/a"]
    result = push("w:1", store=store, remote_ref=f"{registry_server.host}/mount/c:1")
    assert result.blobs_mounted == 4 and result.bytes_uploaded == 0


def test_registry_capping_requests_at_10_mb(
    registry_server: RegistryServer, home: Path, tmp_path: Path
) -> None:
    """Behind a proxy refusing bodies over 10 MB with 413, the default push (64 MiB chunks) adapts."""
    proxy = CountingProxy(registry_server.host, max_body=10_000_000)
    try:
        result = push("weights:1", store=Store(home / "store"), remote_ref=f"{proxy.host}/capped/m:1",
                      options=TransferOptions(jobs=3))
    finally:
        proxy.close()
    refused = [(m, p) for m, p, st in proxy.requests if st == 413]
    assert refused and all(m in ("PUT", "PATCH") for m, _ in refused)
    assert proxy.peak >= 2  # several blobs at once
    assert result.blobs_uploaded == 4
    dst = Store(tmp_path / "store")
    pull(f"{registry_server.host}/capped/m:1", store=dst, all_variants=True)
    assert _weights(dst) == _weights(Store(home / "store"))


def test_json_progress_has_a_total_and_no_bars_without_a_terminal(
    registry_server: RegistryServer, home: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "FF_HOME": str(tmp_path / "h")}
    remote = f"{registry_server.host}/progress/m:1"
    push("weights:1", store=Store(home / "store"), remote_ref=remote)
    out = subprocess.run([*FF, "pull", remote, "--all-variants", "--json", "--jobs", "2"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    total = next(x for x in lines if x["status"] == "total")
    assert total["total"] == BIG + 3 * MiB + 200 * 1024 + sum(
        x["total"] for x in lines if x["status"] == "done" and x["total"] < 100 * 1024
    )
    env["FF_HOME"] = str(tmp_path / "q")
    quiet = subprocess.run([*FF, "pull", remote, "--all-variants"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.startswith("pulled ")
