"""push → rm → pull against a real registry (Debian docker-registry), read back by skopeo too."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from remote_testkit import RegistryServer, make_model

from registry.artifact import open_variant, variants_of
from registry.http import RegistryError
from registry.remote import pull, push
from registry.select import HostInfo, SelectionError
from registry.store import NotFoundError, Store, sha256_file

pytestmark = pytest.mark.registry

CPU_HOST = HostInfo(frozenset({"cpu"}), frozenset(), frozenset({"llamacpp"}))


@pytest.fixture(scope="session")
def source_store(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Store:
    store = Store(tmp_path_factory.mktemp("source") / "store")
    make_model(store, smollm2_gguf)
    return store


def _blob_set(store: Store) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in store.blobs.iterdir()}


def _payload_bytes(store: Store, ref: str) -> int:
    """Bytes of the distinct configs and layers of a model's variants (what a push must send)."""
    sizes: dict[str, int] = {}
    for v in variants_of(store, ref):
        m = store.read_json(v.descriptor.digest)
        for d in [m["config"], *m["layers"]]:
            sizes[d["digest"]] = d["size"]
    return sum(sizes.values())


def _upload_count(server: RegistryServer, repo: str) -> int:
    return server.log_text().count(f'"POST /v2/{repo}/blobs/uploads/')


def test_push_rm_pull_gives_same_digests(
    registry_server: RegistryServer, smollm2_gguf: Path, tmp_path: Path, docker_config: Path
) -> None:
    store = Store(tmp_path / "store")
    index_digest = make_model(store, smollm2_gguf)
    before = _blob_set(store)
    remote = f"{registry_server.host}/ff/roundtrip:1"

    res = push("smollm2:1", store=store, remote_ref=remote)
    assert res.digest == index_digest
    assert res.blobs_uploaded == 8 and res.blobs_skipped == 0  # 2 configs, weight, 4 text layers, README
    assert res.bytes_uploaded == _payload_bytes(store, "smollm2:1")
    host = registry_server.host
    assert sorted(res.tags) == [remote, f"{host}/ff/roundtrip:1-q4_1-cpu", f"{host}/ff/roundtrip:1-q4_1-cuda"]

    # A second OCI client reads what we pushed, byte for byte.
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.fail("skopeo is missing: apt-get install skopeo (.ci/setup does)")
    for tag, digest in [("1", index_digest), *[
        (f"1-{v.name}", v.descriptor.digest) for v in variants_of(store, "smollm2:1")
    ]]:
        raw = subprocess.run(
            [skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{registry_server.host}/ff/roundtrip:{tag}"],
            check=True, capture_output=True,
        ).stdout
        assert raw == store.read_blob(digest), tag

    # ff rm: drop every tag and prune, so the store is empty again.
    for name, _ in store.tags():
        store.untag(name)
    store.prune()
    assert _blob_set(store) == {}

    got = pull(remote, store=store, all_variants=True)
    assert got.digest == index_digest and sorted(got.variants) == ["q4_1-cpu", "q4_1-cuda"]
    assert _blob_set(store) == before
    for name in before:  # every blob hashes to its name
        assert sha256_file(store.blob_path("sha256:" + name))[0] == "sha256:" + name
    assert store.resolve(remote).digest == index_digest
    files = open_variant(store, variants_of(store, remote)[0].descriptor.digest)
    assert files.weights[0].read_bytes() == smollm2_gguf.read_bytes()
    assert list((store.root / "ingest").iterdir()) == []


def test_push_twice_transfers_no_blob_bytes(registry_server: RegistryServer, source_store: Store) -> None:
    remote = f"{registry_server.host}/ff/twice:1"
    first = push("smollm2:1", store=source_store, remote_ref=remote)
    uploads = _upload_count(registry_server, "ff/twice")
    assert first.bytes_uploaded > 98_000_000 and uploads == first.blobs_uploaded
    second = push("smollm2:1", store=source_store, remote_ref=remote)
    assert second.bytes_uploaded == 0 and second.blobs_uploaded == 0
    assert second.blobs_skipped == first.blobs_uploaded
    assert _upload_count(registry_server, "ff/twice") == uploads  # the registry saw no new upload session


def test_pull_picks_the_variant_for_this_machine(
    registry_server: RegistryServer, source_store: Store, tmp_path: Path
) -> None:
    remote = f"{registry_server.host}/ff/select:1"
    push("smollm2:1", store=source_store, remote_ref=remote)
    store = Store(tmp_path / "store")
    got = pull(remote, store=store, host=CPU_HOST, local_name="mine:1")
    assert got.variants == ["q4_1-cpu"]
    # The index is stored as-is (same digest); the other variant is listed but not present.
    assert store.resolve(remote).digest == got.digest == store.resolve("mine:1").digest
    vs = {v.name: v for v in variants_of(store, remote)}
    assert set(vs) == {"q4_1-cpu", "q4_1-cuda"}
    assert open_variant(store, vs["q4_1-cpu"].descriptor.digest).weights
    with pytest.raises(NotFoundError):
        open_variant(store, vs["q4_1-cuda"].descriptor.digest)
    names = {n for n, _ in store.tags()}
    assert f"{remote}-q4_1-cpu" in names and f"{remote}-q4_1-cuda" not in names
    assert "mine:1-q4_1-cpu" in names

    # A machine with a GPU gets the CUDA variant; naming one picks it anywhere.
    gpu = HostInfo(frozenset({"cpu", "cuda"}), frozenset({"sm_90"}), frozenset({"llamacpp"}))
    assert pull(remote, store=Store(tmp_path / "s2"), host=gpu).variants == ["q4_1-cuda"]
    assert pull(remote, store=Store(tmp_path / "s3"), host=CPU_HOST, variant="q4_1-cuda").variants == [
        "q4_1-cuda"
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "rocm"}, "no variant matches"),
        ({"quantize": "q8_0"}, "no variant matches"),
        ({"host": HostInfo(frozenset({"cpu"}), frozenset(), frozenset())}, "no variant fits this machine"),
    ],
)
def test_pull_selection_errors_list_candidates(
    registry_server: RegistryServer, source_store: Store, tmp_path: Path, kwargs: dict[str, object],
    message: str,
) -> None:
    remote = f"{registry_server.host}/ff/select-err:1"
    push("smollm2:1", store=source_store, remote_ref=remote)
    store = Store(tmp_path / "store")
    args: dict[str, object] = {"host": CPU_HOST, **kwargs}
    with pytest.raises(SelectionError, match=message) as err:
        pull(remote, store=store, **args)  # type: ignore[arg-type]
    assert "q4_1-cpu" in str(err.value) and "q4_1-cuda" in str(err.value)
    assert store.tags() == [] and list(store.blobs.iterdir()) == []


def test_cli_push_pull_json(
    registry_server: RegistryServer, source_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ffcli.remote import pull as pull_cmd
    from ffcli.remote import push as push_cmd

    monkeypatch.setenv("FF_HOME", str(source_store.root.parent))
    remote = f"{registry_server.host}/ff/cli:1"
    out = CliRunner().invoke(push_cmd, ["smollm2:1", remote, "--json"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.output.splitlines()]
    assert lines[-1]["status"] == "result" and lines[-1]["remote"] == remote
    monkeypatch.setenv("FF_HOME", str(tmp_path / "home"))
    out = CliRunner().invoke(pull_cmd, [remote, "--json", "--variant", "q4_1-cpu"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.output.splitlines()]
    result = lines[-1]
    assert result["status"] == "result" and result["variants"] == ["q4_1-cpu"]
    pulled = {ev["digest"] for ev in lines if ev.get("status") == "done"}
    assert len(pulled) == result["blobs_fetched"] == 6  # config, weight, 4 text layers
    assert result["bytes_downloaded"] == sum(Store(tmp_path / "home" / "store").blob_path(d).stat().st_size
                                             for d in pulled)
    # Errors are one clear line, no traceback.
    out = CliRunner().invoke(pull_cmd, [remote, "--quiet", "--target", "rocm"])
    assert out.exit_code == 1 and "no variant matches" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(push_cmd, ["smollm2:1", "--quiet"])
    assert out.exit_code == 1 and "needs a registry host" in out.output


def test_pull_by_digest_and_by_variant_tag(
    registry_server: RegistryServer, source_store: Store, tmp_path: Path
) -> None:
    remote = f"{registry_server.host}/ff/bydigest:1"
    pushed = push("smollm2:1", store=source_store, remote_ref=remote)
    store = Store(tmp_path / "store")
    by_digest = pull(f"{registry_server.host}/ff/bydigest@{pushed.digest}", store=store, host=CPU_HOST)
    assert by_digest.digest == pushed.digest
    named = f"{registry_server.host}/ff/bydigest:sha256-{pushed.digest[7:]}"
    assert store.resolve(named).digest == pushed.digest
    # A variant's own tag is a plain manifest: no selection, stored under that tag.
    single = pull(f"{remote}-q4_1-cuda", store=store, host=CPU_HOST)
    (v,) = variants_of(store, f"{remote}-q4_1-cuda")
    assert single.variants == [v.name] == ["q4_1-cuda"]
    assert open_variant(store, v.descriptor.digest).weights
    # A digest that is not the registry's answer is refused.
    wrong = "sha256:" + "0" * 64
    with pytest.raises(RegistryError, match=r"404|MANIFEST_UNKNOWN"):
        pull(f"{registry_server.host}/ff/bydigest@{wrong}", store=store)


def test_push_of_a_partly_pulled_model_is_refused(
    registry_server: RegistryServer, source_store: Store, tmp_path: Path
) -> None:
    remote = f"{registry_server.host}/ff/partial:1"
    push("smollm2:1", store=source_store, remote_ref=remote)
    store = Store(tmp_path / "store")
    pull(remote, store=store, host=CPU_HOST)
    with pytest.raises(RegistryError, match=r"variants q4_1-cuda are not in the store.*--all-variants"):
        push(remote, store=store, remote_ref=f"{registry_server.host}/ff/partial-copy:1")
    # The variant it has can be pushed on its own, under its own tag.
    res = push(f"{remote}-q4_1-cpu", store=store, remote_ref=f"{registry_server.host}/ff/partial-copy:cpu")
    # Its 6 blobs were pulled from ff/partial of the same registry: mounted from there, none re-sent.
    assert res.blobs_mounted == 6 and res.blobs_uploaded == 0 and res.bytes_uploaded == 0


def test_a_pull_holds_off_prune_until_its_tags_are_written(
    registry_server: RegistryServer, source_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs a pull has fetched are unreachable until its tags are written: all the while, prune's
    exclusive lock on the store cannot be had."""
    remote = f"{registry_server.host}/ff/held:1"
    push("smollm2:1", store=source_store, remote_ref=remote)
    store = Store(tmp_path / "store")
    seen: list[bool] = []
    real_tag = Store.tag

    def tag(self: Store, *args: Any, **kwargs: Any) -> Any:
        fd = os.open(self.locks / "gc.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(False)  # prune could have run here
        except BlockingIOError:
            seen.append(True)
        finally:
            os.close(fd)
        return real_tag(self, *args, **kwargs)

    monkeypatch.setattr(Store, "tag", tag)
    pull(remote, store=store, host=CPU_HOST)
    assert seen and all(seen), seen
