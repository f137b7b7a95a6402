from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest

from registry.oci import OCI_MANIFEST, Descriptor
from registry.store import DigestMismatchError, NotFoundError, Store, StoreError


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_layout_created(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    assert (tmp_path / "s" / "oci-layout").read_text() == '{"imageLayoutVersion":"1.0.0"}'
    assert store.tags() == []


def test_add_bytes_and_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    d, n = store.add_bytes(b"hello")
    assert (d, n) == (_digest(b"hello"), 5)
    f = tmp_path / "f.bin"
    f.write_bytes(b"hello")
    assert store.add_file(f) == (d, 5)
    assert f.exists()  # copied, not moved
    assert store.read_blob(d) == b"hello"
    assert not list(store.ingest.iterdir())


def test_add_stream_verifies(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    good = _digest(b"abc")
    assert store.add_stream([b"a", b"bc"], good, 3) == 3
    with pytest.raises(DigestMismatchError):
        store.add_stream([b"abX"], _digest(b"xyz"))
    with pytest.raises(DigestMismatchError):
        store.add_stream([b"abc"], good, 4)
    assert not store.has_blob(_digest(b"xyz"))
    assert not list(store.ingest.iterdir()), "a failed stream must leave nothing behind"


def test_corrupt_blob_detected(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    d, _ = store.add_bytes(b"payload")
    store.blob_path(d).write_bytes(b"tampered")
    with pytest.raises(DigestMismatchError):
        store.read_blob(d)


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64, "../../etc/passwd"])
def test_bad_digest_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StoreError):
        Store(tmp_path / "s").blob_path(bad)


def test_tags_resolve_untag_prune(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    layer, _ = store.add_bytes(b"weights")
    cfg, _ = store.add_bytes(b"{}")
    man = store.add_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/json", "digest": cfg, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": 7}],
        },
        OCI_MANIFEST,
    )
    orphan, _ = store.add_bytes(b"orphan")
    store.tag("m:1", man)
    store.tag("m:2", man)
    assert store.resolve("m:1").digest == man.digest
    assert sorted(n for n, _ in store.tags()) == ["m:1", "m:2"]
    removed = {d for d, _ in store.prune()}
    assert removed == {orphan}
    assert store.untag("m:1") and not store.untag("m:1")
    with pytest.raises(NotFoundError):
        store.resolve("m:1")
    store.untag("m:2")
    assert {d for d, _ in store.prune()} == {man.digest, layer, cfg}


def test_tag_requires_blob(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    with pytest.raises(NotFoundError):
        store.tag("m", Descriptor(media_type=OCI_MANIFEST, digest="sha256:" + "0" * 64, size=1))


def _tag_many(root: str, worker: int) -> None:
    store = Store(Path(root))
    for i in range(20):
        d = store.add_json({"worker": worker, "i": i}, OCI_MANIFEST)
        store.tag(f"w{worker}:t{i}", d)


def test_concurrent_taggers_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "s"
    Store(root)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_tag_many, args=(str(root), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(Store(root).tags()) == 80


def test_atomic_write_leaves_no_temp(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    for i in range(5):
        store.tag(f"m:{i}", store.add_json({"i": i}, OCI_MANIFEST))
    leftovers = [p for p in (tmp_path / "s").rglob("*.tmp-*")]
    assert leftovers == []
    assert os.listdir(store.ingest) == []


def _manifest_with_layer(store: Store, layer_data: bytes) -> Descriptor:
    layer, size = store.add_bytes(layer_data)
    cfg, _ = store.add_bytes(b"{}")
    return store.add_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/json", "digest": cfg, "size": 2},
            "layers": [
                {"mediaType": "application/vnd.ferrousforge.template.v1+text", "digest": layer, "size": size}
            ],
        },
        OCI_MANIFEST,
    )


def test_prune_does_not_walk_into_layers_that_look_like_manifests(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    hostile = b'{"layers": 5, "manifests": "x"}'  # a template layer shaped like a manifest
    store.tag("m:1", _manifest_with_layer(store, hostile))
    assert store.prune() == []
    assert store.has_blob(_digest(hostile))


def test_prune_refuses_a_malformed_tagged_manifest(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    bad = store.add_json({"schemaVersion": 2, "layers": 5}, OCI_MANIFEST)
    store.tag("m:1", bad)
    orphan, _ = store.add_bytes(b"orphan")
    with pytest.raises(StoreError, match="malformed"):
        store.prune()
    assert store.has_blob(orphan)  # nothing deleted


def test_prune_waits_for_writers(tmp_path: Path) -> None:
    import threading
    import time

    store = Store(tmp_path / "s")
    pruned: list[list[tuple[str, int]]] = []
    with store.writing():
        man = _manifest_with_layer(store, b"fresh weights")  # committed, not yet tagged
        t = threading.Thread(target=lambda: pruned.append(Store(tmp_path / "s").prune()))
        t.start()
        time.sleep(0.5)
        assert t.is_alive(), "prune must wait while a writer holds the store"
        store.tag("m:1", man)
    t.join(10)
    assert pruned == [[]] and store.has_blob(_digest(b"fresh weights"))


def test_digest_pinned_tag_must_match(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    a = store.add_json({"a": 1}, OCI_MANIFEST)
    b = store.add_json({"b": 2}, OCI_MANIFEST)
    store.tag("m:1", a)
    assert store.resolve(f"m:1@{a.digest}").digest == a.digest
    with pytest.raises(NotFoundError, match="pinned"):
        store.resolve(f"m:1@{b.digest}")


def test_a_link_to_a_file_hashed_as_it_is_now_is_not_hashed_again(tmp_path: Path) -> None:
    """``hashed_as``: the caller hashed this inode at this size and mtime; a changed file is hashed."""
    store = Store(tmp_path / "s")
    f = tmp_path / "model.gguf"
    f.write_bytes(b"weights")
    st = f.stat()
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    f.write_bytes(b"WEIGHTS")  # the same size; restore the mtime: to the store it is the file hashed
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.add_file(f, link=True, expected_digest=_digest(b"weights"), hashed_as=stamp)[0] == _digest(
        b"weights"
    )  # trusted, not read (which is why only build outputs, never edited in place, pass it)
    g = tmp_path / "other.gguf"
    g.write_bytes(b"fresh")
    stale = (g.stat().st_ino, 5, g.stat().st_mtime_ns - 1)  # hashed before its last write: read again
    with pytest.raises(DigestMismatchError):
        store.add_file(g, link=True, expected_digest=_digest(b"other"), hashed_as=stale)
    assert store.add_file(g, link=True, expected_digest=_digest(b"fresh"), hashed_as=stale)[0] == _digest(
        b"fresh"
    )
