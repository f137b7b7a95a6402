"""Hostile registry content is refused with a clear error and leaves nothing behind.

Tampered blobs (edited in the registry's own storage after push), layer paths that escape, archive
layers holding a symlink, and oversized manifests or blobs from a crafted HTTP server.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from remote_testkit import RegistryServer, blob_desc, make_model, push_raw, serve_http

from registry.artifact import ArtifactError
from registry.http import RegistryError
from registry.oci import MAX_MANIFEST_BYTES, MODEL_CONFIG, MODEL_WEIGHT
from registry.remote import pull, push
from registry.store import DigestMismatchError, Store

pytestmark = pytest.mark.registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = json.dumps({
    "descriptor": {"name": "x"}, "config": {"format": "gguf"}, "modelfs": {"type": "layers", "diffIds": ["x"]}
}).encode()


def _snapshot(store: Store) -> dict[str, object]:
    return {
        "blobs": sorted(p.name for p in store.blobs.iterdir()),
        "ingest": sorted(p.name for p in store.ingest.iterdir()),
        "index": (store.root / "index.json").read_bytes(),
        "files": sorted(str(p.relative_to(store.root.parent)) for p in store.root.parent.rglob("*")
                        if not p.name.endswith(".lock")),
    }


def _manifest(layers: list[dict[str, object]]) -> dict[str, object]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": blob_desc(CONFIG, MODEL_CONFIG),
        "layers": layers,
    }


def test_tampered_blob_is_refused(
    registry_server: RegistryServer, smollm2_gguf: Path, tmp_path: Path
) -> None:
    src = Store(tmp_path / "src" / "store")
    make_model(src, smollm2_gguf)
    remote = f"{registry_server.host}/hostile/tamper:1"
    push("smollm2:1", store=src, remote_ref=remote)
    # Flip bytes of the LICENSE layer inside the registry's filesystem storage (same size).
    license_digest = next(
        d["digest"]
        for v in src.read_json(src.resolve("smollm2:1").digest)["manifests"]
        for d in src.read_json(v["digest"])["layers"]
        if d["annotations"]["org.cncf.model.filepath"] == "LICENSE"
    )
    data_file = registry_server.blob_data(license_digest)
    original = data_file.read_bytes()
    data_file.write_bytes(original.upper().replace(b"APACHE", b"EVILLL"))
    try:
        store = Store(tmp_path / "dst" / "store")
        before = _snapshot(store)
        with pytest.raises(DigestMismatchError, match=f"blob {license_digest} .* does not match its digest"):
            pull(remote, store=store, variant="q4_1-cpu")
        after = _snapshot(store)
        assert after["index"] == before["index"] and store.tags() == []
        assert after["ingest"] == []  # nothing half-written, the bad bytes are gone
        assert license_digest.split(":")[1] not in after["blobs"]  # type: ignore[operator]
        # Small blobs (config, text layers) come first, several at once, so the weights never moved.
        assert all(p.stat().st_size < 1024 * 1024 for p in store.blobs.iterdir())
        assert len(after["blobs"]) <= 4  # type: ignore[arg-type]
    finally:
        data_file.write_bytes(original)


@pytest.mark.parametrize(
    ("filepath", "message"),
    [
        ("../evil.gguf", "escapes its folder"),
        ("models/../../evil.gguf", "escapes its folder"),
        ("/etc/evil.gguf", "is absolute"),
        ("C:/evil.gguf", "is absolute"),
        ("a\\..\\evil.gguf", "unsafe layer path"),
        ("./model.gguf", "escapes its folder"),
    ],
)
def test_escaping_layer_paths_are_refused(
    registry_server: RegistryServer, tmp_path: Path, filepath: str, message: str
) -> None:
    weights = b"GGUF" + b"\0" * 60
    manifest = _manifest([blob_desc(weights, MODEL_WEIGHT, filepath)])
    push_raw(registry_server.host, "hostile/paths", "t", [CONFIG, weights], manifest)
    store = Store(tmp_path / "home" / "store")
    before = _snapshot(store)
    with pytest.raises(ArtifactError, match=message):
        pull(f"{registry_server.host}/hostile/paths:t", store=store)
    assert _snapshot(store) == before  # refused before any blob was fetched
    assert not list(tmp_path.rglob("evil*"))


def test_tar_layer_with_symlink_is_refused(registry_server: RegistryServer, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("model.gguf")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    archive = buf.getvalue()
    manifest = _manifest([blob_desc(archive, "application/vnd.cncf.model.weight.v1.tar", "weights")])
    push_raw(registry_server.host, "hostile/tar", "t", [CONFIG, archive], manifest)
    store = Store(tmp_path / "home" / "store")
    before = _snapshot(store)
    with pytest.raises(ArtifactError, match=r"is an archive .*never unpacks archives"):
        pull(f"{registry_server.host}/hostile/tar:t", store=store)
    assert _snapshot(store) == before
    assert not [p for p in tmp_path.rglob("*") if p.is_symlink()]


# --- a crafted registry -------------------------------------------------------------------------------
class _Hostile(BaseHTTPRequestHandler):
    """Answers /v2/ like a registry; manifests and blobs are oversized or lie about their size."""

    protocol_version = "HTTP/1.1"
    sent: dict[str, int] = {}  # noqa: RUF012 - shared counters for the test
    requested: list[str] = []  # noqa: RUF012
    small_blob = b"x" * 10
    big_blob = b"y" * (2 * 1024 * 1024)

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _send_body(self, chunks: Iterator[bytes], length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", OCI_MANIFEST)
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        n = 0
        try:
            for c in chunks:
                self.wfile.write(c)
                n += len(c)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.sent[self.path] = n

    def do_GET(self) -> None:
        path = self.path
        if path != "/v2/":
            self.requested.append(path)
        big = MAX_MANIFEST_BYTES + 1024 * 1024
        if path == "/v2/":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
        elif path.endswith("/manifests/declared"):  # says how big it is up front
            self._send_body(iter([b" " * big]), big)
        elif path.endswith("/manifests/streamed"):  # no length: must be cut off while reading
            self._send_body((b" " * 65536 for _ in range(big // 65536)), None)
        elif path.endswith("/manifests/huge"):  # declares a petabyte of weights
            huge = {**blob_desc(self.small_blob, MODEL_WEIGHT, "model.gguf"), "size": 10**15}
            body = json.dumps(_manifest([huge])).encode()
            self._send_body(iter([body]), len(body))
        elif path.endswith("/manifests/liar"):
            body = json.dumps(_manifest([blob_desc(self.small_blob, MODEL_WEIGHT, "model.gguf")])).encode()
            self._send_body(iter([body]), len(body))
        elif "/blobs/" in path:
            is_config = path.endswith(str(blob_desc(CONFIG, "")["digest"]))
            self._send_body(iter([CONFIG if is_config else self.big_blob]), None)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture(scope="module")
def hostile_server() -> Iterator[str]:
    with serve_http(_Hostile) as host:
        yield host


@pytest.mark.parametrize("tag", ["declared", "streamed"])
def test_oversized_manifest_is_refused_while_reading(hostile_server: str, tmp_path: Path, tag: str) -> None:
    store = Store(tmp_path / "home" / "store")
    before = _snapshot(store)
    with pytest.raises(RegistryError, match=f"over the {MAX_MANIFEST_BYTES} byte limit"):
        pull(f"{hostile_server}/evil/model:{tag}", store=store)
    assert _snapshot(store) == before


def test_blob_larger_than_declared_is_cut_off(hostile_server: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "home" / "store")
    with pytest.raises(DigestMismatchError, match="larger than its declared 10 bytes"):
        pull(f"{hostile_server}/evil/model:liar", store=store)
    assert store.tags() == [] and list(store.ingest.iterdir()) == []
    assert _Hostile.small_blob.hex() not in {p.name for p in store.blobs.iterdir()}


def test_a_pull_larger_than_the_free_disk_is_refused_up_front(hostile_server: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "home" / "store")
    before = _snapshot(store)
    _Hostile.requested.clear()
    with pytest.raises(RegistryError, match=r"needs \d+ more bytes .* only \d+ are free; nothing was"):
        pull(f"{hostile_server}/evil/model:huge", store=store)
    assert _snapshot(store) == before
    assert _Hostile.requested == ["/v2/evil/model/manifests/huge"]  # no blob was asked for
