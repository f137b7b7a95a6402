"""What every transfer shares: progress events, transfer settings, and manifests by reference.

Blobs move in :mod:`registry.download` (verified, resumable, parallel ranges) and
:mod:`registry.upload` (HEAD, cross-repository mount, one PUT or resumable ``PATCH`` chunks);
:mod:`registry.remote` runs several of them at once (:class:`TransferOptions`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from registry.http import RegistryClient, RegistryError
from registry.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from registry.store import DigestMismatchError

ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
MiB = 1024 * 1024


@dataclass(frozen=True)
class TransferOptions:
    """How a push or pull moves its blobs; each field has an ``FF_*`` variable (:meth:`from_env`).

    Defaults were chosen by measurement (docs/benchmarks.md, "Transfer": 1.1 GB in 4 layers, loopback
    Debian docker-registry, quiet 2-core machine, ``bench/transfer.py --sweep --rounds 3``): 2 blobs at
    once pushed in 2.83 s against 3.19 s with 4 and 4.48 s with 1, and pulled as fast as any other
    setting (1.93 s). The registry's hashing and writing of one upload runs on one core, so on a
    CPU-bound registry 2 streams, largest blob first, keep both cores busy and let the largest blob's
    stream have a core of its own; more streams only share the cores. 4 ranges for blobs of 256 MiB and
    more cost nothing beside 2 jobs (1.94 s) and help where one TCP stream cannot fill a link.
    """

    jobs: int = 2
    """``FF_TRANSFER_JOBS``: blobs moved at once."""
    chunk_size: int = 64 * MiB
    """``FF_CHUNK_SIZE``: largest upload request body; bigger blobs go as ``PATCH`` chunks of this
    size (raised to the registry's ``OCI-Chunk-Min-Length``, halved when the registry answers 413)."""
    range_parts: int = 4
    """``FF_RANGE_PARTS``: parallel ``Range`` requests for one large blob on pull (1: one stream)."""
    range_min: int = 256 * MiB
    """``FF_RANGE_MIN``: blobs at least this large are split into ``range_parts`` ranges."""

    def __post_init__(self) -> None:
        if not 1 <= self.jobs <= 64:
            raise ValueError(f"transfer jobs must be 1..64, not {self.jobs}")
        if not 1 <= self.range_parts <= 64:
            raise ValueError(f"range parts must be 1..64, not {self.range_parts}")
        if self.chunk_size < 64 * 1024:
            raise ValueError(f"chunk size must be at least 64 KiB, not {self.chunk_size}")

    @classmethod
    def from_env(cls, **overrides: int | None) -> TransferOptions:
        """Defaults, then ``FF_*`` variables, then ``overrides`` that are not ``None`` (flags)."""
        env: dict[str, tuple[str, Callable[[str], int]]] = {
            "jobs": ("FF_TRANSFER_JOBS", int),
            "chunk_size": ("FF_CHUNK_SIZE", parse_size),
            "range_parts": ("FF_RANGE_PARTS", int),
            "range_min": ("FF_RANGE_MIN", parse_size),
        }
        values: dict[str, int] = {}
        for name, (var, conv) in env.items():
            raw = os.environ.get(var, "").strip()
            if raw:
                try:
                    values[name] = conv(raw)
                except ValueError:
                    what = "a size such as 16MiB" if conv is parse_size else "a whole number"
                    raise ValueError(f"{var}={raw!r} is not {what}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


_SIZE = re.compile(r"(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": MiB, "mb": 1000**2, "mib": MiB,
          "g": 1024 * MiB, "gb": 1000**3, "gib": 1024 * MiB}


def parse_size(text: str) -> int:
    """``16777216``, ``16MiB``, ``16M`` (binary), ``16MB`` (decimal) as bytes."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a size (e.g. 16MiB)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a push or pull, for progress bars, ``--json`` lines and the server's /api/pull.

    ``status`` is one of ``resolving``, ``manifest``, ``exists``, ``mounted`` (the registry linked a
    blob from another repository), ``pulling``, ``pushing``, ``verifying``, ``done`` (a blob
    finished), ``tagged`` or ``success``. ``completed``/``total`` are bytes of the blob
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


def serialised(progress: ProgressFn) -> ProgressFn:
    """``progress`` called by one thread at a time (blobs move in several threads)."""
    if progress is no_progress:
        return progress
    lock = threading.Lock()

    def call(e: ProgressEvent) -> None:
        with lock:
            progress(e)

    return call


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


