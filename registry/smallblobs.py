"""Small blobs (signature payloads, SBOMs, configs) to and from a registry, held in memory."""

from __future__ import annotations

import tempfile
from pathlib import Path

from registry.http import RegistryClient, RegistryError
from registry.oci import Descriptor
from registry.transfer import sha256_digest
from registry.upload import upload_blob


def upload_bytes(client: RegistryClient, repo: str, data: bytes, media_type: str) -> Descriptor:
    """Upload ``data`` as a blob (skipped when the registry has it); return its descriptor."""
    desc = Descriptor(media_type=media_type, digest=sha256_digest(data), size=len(data))
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        upload_blob(client, repo, Path(f.name), desc)
    return desc


def fetch_bytes(client: RegistryClient, repo: str, digest: str, size: int, limit: int) -> bytes:
    """GET a blob of at most ``limit`` bytes and check it against ``digest`` and ``size``."""
    if size > limit:
        raise RegistryError(f"blob {digest} of {size} bytes is over the {limit} byte limit")
    resp = client.do_request(client.url(f"/v2/{repo}/blobs/{digest}"), "GET", stream=True)
    client.check(resp, 200, what=f"GET blob {digest}")
    data = client.read_bounded(resp, limit)
    if len(data) != size or sha256_digest(data) != digest:
        raise RegistryError(f"blob {digest} from {client.host} does not match its digest and size")
    return data
