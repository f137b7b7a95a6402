"""Moving single blobs and manifests between the store and a registry, verified and resumable.

Downloads stream into ``store/ingest/<hex>.partial`` under a per-blob file lock, hashing as they go;
an interrupted download continues with an HTTP ``Range`` request, the size is enforced while reading,
and the blob gets its final name only after its digest and size verify. Uploads HEAD first, then send
small blobs in one PUT and large ones as ``PATCH`` chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import oras.utils

from registry.http import InterruptedTransfer, RegistryClient, RegistryError, iter_body
from registry.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
)
from registry.store import DigestMismatchError, Store

ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
CHUNK_SIZE = 64 * 1024 * 1024
"""Blobs larger than this are uploaded as several PATCH requests of this size."""
READ_SIZE = 1024 * 1024
RETRIES = 3
"""How many times one pull resumes a blob whose connection broke before giving up."""


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a push or pull, for progress bars, ``--json`` lines and the server's /api/pull.

    ``status`` is one of ``resolving``, ``manifest``, ``exists``, ``pulling``, ``pushing``, ``verifying``,
    ``done`` (a blob finished), ``tagged`` or ``success``. ``completed``/``total`` are bytes of the blob
    (``completed`` counts bytes already in a resumed partial file); ``transferred`` counts only bytes
    that crossed the network in this call.
    """

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0
    transferred: int = 0
    title: str = ""

    def wire(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v not in ("", None)}


ProgressFn = Callable[[ProgressEvent], None]


def no_progress(_: ProgressEvent) -> None:
    return None


# --- manifests ---------------------------------------------------------------------------------------
def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def get_manifest(client: RegistryClient, repo: str, reference: str) -> tuple[bytes, str, str]:
    """Fetch a manifest or index by tag or digest; return (bytes, media type, verified digest)."""
    found = find_manifest(client, repo, reference, missing_ok=False)
    assert found is not None
    return found


def find_manifest(
    client: RegistryClient, repo: str, reference: str, *, missing_ok: bool = True
) -> tuple[bytes, str, str] | None:
    """:func:`get_manifest`, or ``None`` when the registry answers 404 (and ``missing_ok``)."""
    resp = client.do_request(
        client.url(f"/v2/{repo}/manifests/{reference}"), "GET", headers={"Accept": ACCEPT}, stream=True
    )
    if missing_ok and resp.status_code == 404:
        resp.close()
        return None
    client.check(resp, 200, what=f"GET manifest {repo}:{reference}")
    data = client.read_bounded(resp, MAX_MANIFEST_BYTES)
    digest = sha256_digest(data)
    if reference.startswith("sha256:") and digest != reference:
        raise DigestMismatchError(f"manifest {repo}@{reference} from {client.host} hashes to {digest}")
    claimed = resp.headers.get("Docker-Content-Digest")
    if claimed and claimed.startswith("sha256:") and claimed != digest:
        raise DigestMismatchError(
            f"manifest {repo}:{reference} from {client.host} hashes to {digest}, the registry says {claimed}"
        )
    media_type = resp.headers.get("Content-Type", "").split(";", 1)[0].strip()
    try:
        obj = json.loads(data)
        if isinstance(obj, dict) and isinstance(obj.get("mediaType"), str):
            media_type = obj["mediaType"]
    except ValueError:
        pass
    return data, media_type, digest


def put_manifest(client: RegistryClient, repo: str, reference: str, data: bytes, media_type: str) -> None:
    """PUT manifest bytes exactly as stored (re-serialising would change the digest)."""
    resp = client.do_request(
        client.url(f"/v2/{repo}/manifests/{reference}"),
        "PUT",
        data=data,
        headers={"Content-Type": media_type},
    )
    client.check(resp, 200, 201, what=f"PUT manifest {repo}:{reference}")
    claimed = resp.headers.get("Docker-Content-Digest")
    resp.close()
    if claimed and claimed != sha256_digest(data):
        raise RegistryError(f"{client.host} stored manifest {repo}:{reference} as {claimed}, not as sent")


# --- blob download -----------------------------------------------------------------------------------
@dataclass
class BlobStats:
    transferred: int = 0  # bytes over the network in this call
    resumed: int = 0  # bytes already in a partial file from an earlier, interrupted call
    present: bool = False  # the store already had it


class _ResumedMismatch(DigestMismatchError):
    """A resumed download did not verify: the old partial file may be the bad part."""


def download_blob(
    client: RegistryClient,
    repo: str,
    store: Store,
    desc: Descriptor,
    progress: ProgressFn = no_progress,
    *,
    title: str = "",
) -> BlobStats:
    """Make ``desc`` present in the store, downloading (or resuming) and verifying it.

    A connection that breaks midway is resumed from where it stopped, up to ``RETRIES`` times. A
    resumed download that does not verify is retried once from the start (the bytes kept from an
    earlier attempt may be what was wrong); a fresh one that does not verify is an error.
    """
    stats = BlobStats()
    broken, mismatched = 0, 0
    while True:
        try:
            _download(client, repo, store, desc, progress, title, stats, first=not (broken or mismatched))
            return stats
        except _ResumedMismatch:
            if mismatched:
                raise
            mismatched += 1
            stats.resumed = 0  # those bytes were discarded; what this call moved still counts
        except InterruptedTransfer:
            if broken >= RETRIES:
                raise
            broken += 1
            time.sleep(0.5 * broken)


def _download(
    client: RegistryClient,
    repo: str,
    store: Store,
    desc: Descriptor,
    progress: ProgressFn,
    title: str,
    stats: BlobStats,
    *,
    first: bool,
) -> None:
    digest, size = desc.digest, desc.size
    with store.lock(digest):
        if store.has_blob(digest):
            progress(ProgressEvent("exists", digest, size, size, 0, title))
            stats.present = True
            return
        part = store.partial_path(digest)
        h = hashlib.sha256()
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            part.unlink()
            offset = 0
        had_partial = offset > 0
        if offset:
            with open(part, "rb") as f:
                while chunk := f.read(READ_SIZE):
                    h.update(chunk)
            if first:
                stats.resumed = offset
        if offset < size:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            resp = client.do_request(
                client.url(f"/v2/{repo}/blobs/{digest}"), "GET", headers=headers, stream=True
            )
            client.check(resp, 200, 206, what=f"GET blob {digest}")
            if offset and resp.status_code == 200:  # the registry ignored Range: start over
                offset, h, had_partial = 0, hashlib.sha256(), False
                if first:
                    stats.resumed = 0
            elif resp.status_code == 206:
                cr = resp.headers.get("Content-Range", "")
                if not cr.startswith(f"bytes {offset}-"):
                    resp.close()
                    raise RegistryError(f"{client.host}: bad Content-Range {cr!r} for {digest}")
            with resp, open(part, "r+b" if part.exists() else "wb") as f:
                f.seek(offset)
                f.truncate()
                progress(ProgressEvent("pulling", digest, size, offset, 0, title))
                for chunk in iter_body(resp, READ_SIZE):
                    if offset + len(chunk) > size:
                        resp.close()
                        f.close()
                        part.unlink(missing_ok=True)
                        raise DigestMismatchError(
                            f"blob {digest} from {client.host} is larger than its declared {size} bytes"
                        )
                    f.write(chunk)
                    h.update(chunk)
                    offset += len(chunk)
                    stats.transferred += len(chunk)
                    progress(ProgressEvent("pulling", digest, size, offset, stats.transferred, title))
                f.flush()
                os.fsync(f.fileno())
            if offset != size:
                raise InterruptedTransfer(
                    f"download of {digest} stopped at {offset} of {size} bytes; pull again to resume"
                )
        progress(ProgressEvent("verifying", digest, size, size, stats.transferred, title))
        if "sha256:" + h.hexdigest() != digest:
            part.unlink(missing_ok=True)
            raise (_ResumedMismatch if had_partial else DigestMismatchError)(
                f"blob {digest} from {client.host} does not match its digest "
                f"(hashes to sha256:{h.hexdigest()}); it was discarded"
            )
        store.commit_file(part, digest, size)
        progress(ProgressEvent("done", digest, size, size, stats.transferred, title))


# --- blob upload -------------------------------------------------------------------------------------
class _Slice:
    """A window of a file as a request body with a known length (so requests sends Content-Length)."""

    def __init__(self, f: BinaryIO, start: int, length: int, on_read: Callable[[int], None]) -> None:
        self.f, self.start, self.length, self.pos = f, start, length, 0
        self.on_read = on_read
        f.seek(start)

    def __len__(self) -> int:
        return self.length

    def seek(self, _: int) -> None:  # a retry after a 401 re-sends from the start
        self.on_read(-self.pos)
        self.pos = 0
        self.f.seek(self.start)

    def read(self, n: int = -1) -> bytes:
        left = self.length - self.pos
        if n < 0 or n > left:
            n = left
        data = self.f.read(n)
        self.pos += len(data)
        self.on_read(len(data))
        return data


def upload_blob(
    client: RegistryClient,
    repo: str,
    path: Path,
    desc: Descriptor,
    progress: ProgressFn = no_progress,
    *,
    title: str = "",
    chunk_size: int = CHUNK_SIZE,
) -> int:
    """Upload one blob unless the registry has it; return the bytes sent."""
    digest, size = desc.digest, desc.size
    container = client.container(repo)
    if client.blob_exists({"digest": digest}, container):
        progress(ProgressEvent("exists", digest, size, size, 0, title))
        return 0
    resp = client.do_request(
        client.url(f"/v2/{repo}/blobs/uploads/"), "POST", headers={"Content-Length": "0"}
    )
    client.check(resp, 202, what=f"start upload of {digest}")
    location = client._get_location(resp, container)
    resp.close()
    if not location:
        raise RegistryError(f"{client.host} started an upload without a Location header")
    sent = 0
    last = [0.0]

    def on_read(n: int) -> None:
        nonlocal sent
        sent += n
        now = time.monotonic()
        if now - last[0] > 0.1 or sent == size:
            last[0] = now
            progress(ProgressEvent("pushing", digest, size, sent, sent, title))

    progress(ProgressEvent("pushing", digest, size, 0, 0, title))
    with open(path, "rb") as f:
        if size <= chunk_size:
            body = _Slice(f, 0, size, on_read)
            resp = client.do_request(
                oras.utils.append_url_params(location, {"digest": digest}),
                "PUT",
                data=body,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
        else:
            start = 0
            while start < size:
                n = min(chunk_size, size - start)
                body = _Slice(f, start, n, on_read)
                resp = client.do_request(
                    location,
                    "PATCH",
                    data=body,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(n),
                        "Content-Range": f"{start}-{start + n - 1}",
                    },
                )
                client.check(resp, 202, what=f"upload chunk {start}-{start + n - 1} of {digest}")
                location = client._get_location(resp, container) or location
                resp.close()
                start += n
            resp = client.do_request(
                oras.utils.append_url_params(location, {"digest": digest}),
                "PUT",
                headers={"Content-Length": "0"},
            )
    client.check(resp, 201, 204, what=f"finish upload of {digest}")
    resp.close()
    progress(ProgressEvent("done", digest, size, size, sent, title))
    return sent
