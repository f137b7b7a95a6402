"""Uploading one blob: HEAD, cross-repository mount, then one PUT or resumable ``PATCH`` chunks.

1. ``HEAD`` — the repository has the blob: nothing to send.
2. Mount — for each repository of the same registry that ff knows holds the blob (it pulled it from
   there or pushed it there: ``Store.blob_sources``), ``POST …/blobs/uploads/?mount=<digest>&from=<repo>``;
   201 means the registry linked it, 0 bytes sent. A 202 is an ordinary upload session, used for step 3.
3. Upload — a blob no larger than the chunk size goes in one ``PUT``; a larger one as ``PATCH``
   requests with ``Content-Range``, each at most the chunk size (at least the registry's
   ``OCI-Chunk-Min-Length``), then an empty ``PUT ?digest=``. A 413 (request too large, as ECR and
   proxies answer) halves the chunk size and goes on from the registry's offset. The session URL is
   recorded in the store after every chunk (``Store.save_upload_location``, atomically), so a push
   killed midway asks the registry for the offset (``GET`` on the session: ``Range: 0-<last>``) and
   sends only the rest. A session the registry no longer knows (404: expired, or invalidated — Docker's
   distribution invalidates a session whose ``PATCH`` was cut off mid-body) starts over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import oras.utils
import requests

from registry.errors import TransferInterrupted
from registry.http import AuthError, RegistryClient, RegistryError
from registry.oci import Descriptor
from registry.store import Store
from registry.transfer import ProgressEvent, ProgressFn, TransferOptions, no_progress

MIN_CHUNK = 1024 * 1024
"""A 413 never shrinks chunks below this."""
MOUNT_TRIES = 3
"""At most this many ``from`` repositories are tried for one blob."""


@dataclass
class UploadStats:
    sent: int = 0  # request-body bytes sent in this call (a chunk refused with 413 counts too)
    resumed: int = 0  # bytes the registry kept from an earlier, interrupted upload
    present: bool = False  # the repository had it (HEAD)
    mounted_from: str = ""  # the repository the registry mounted it from


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
    options: TransferOptions | None = None,
    store: Store | None = None,
    stop: threading.Event | None = None,
) -> UploadStats:
    """Make ``repo`` hold blob ``desc`` (the file ``path``); see the module docstring.

    With ``store``, mounts are tried from the repositories it records and the upload session is
    recorded there for resuming; without one (hand-made blobs) neither happens. Once ``stop`` is set,
    the upload ends after the chunk in flight with :class:`TransferInterrupted` (a later push resumes).
    """
    up = _Upload(client, repo, path, desc, progress, title, options or TransferOptions(), store)
    up.stop = stop
    return up.run()


class _Upload:
    def __init__(
        self, client: RegistryClient, repo: str, path: Path, desc: Descriptor, progress: ProgressFn,
        title: str, opts: TransferOptions, store: Store | None,
    ) -> None:
        self.client, self.repo, self.path, self.desc = client, repo, path, desc
        self.progress, self.title, self.store = progress, title, store
        self.chunk = opts.chunk_size
        self.stats = UploadStats()
        self.container = client.container(repo)
        self.offset = 0  # bytes the registry holds in this session
        self.last_event = 0.0
        self.stop: threading.Event | None = None

    def check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            done = f"; {self.offset} of {self.desc.size} bytes are in, " if self.offset else "; "
            raise TransferInterrupted(f"upload of {self.digest} interrupted{done}push again to resume")

    @property
    def digest(self) -> str:
        return self.desc.digest

    def event(self, status: str, completed: int) -> None:
        self.progress(
            ProgressEvent(status, self.digest, self.desc.size, completed, self.stats.sent, self.title)
        )

    def remember(self, location: str | None) -> None:
        if self.store is not None:
            self.store.save_upload_location(self.client.host, self.repo, self.digest, location)

    def location_of(self, resp: requests.Response) -> str | None:
        loc = self.client._get_location(resp, self.container)
        return str(loc) if loc else None

    def run(self) -> UploadStats:
        size = self.desc.size
        self.check_stop()
        if self.client.blob_exists({"digest": self.digest}, self.container):
            self.event("exists", size)
            self.stats.present = True
            self.remember(None)
            return self.stats
        location = self.resume()
        if location is None:
            location = self.mount()
            if location is None and self.stats.mounted_from:
                self.event("mounted", size)
                return self.stats
        if location is None:
            location = self.start()
        self.event("pushing", self.offset)
        with open(self.path, "rb") as f:
            if self.offset == 0 and size <= self.chunk:
                location = self.put_whole(f, location)
            if location is not None:
                location = self.send_chunks(f, location)
                resp = self.client.do_request(
                    oras.utils.append_url_params(location, {"digest": self.digest}), "PUT",
                    headers={"Content-Length": "0"},
                )
                self.client.check(resp, 201, 204, what=f"finish upload of {self.digest}")
                resp.close()
        self.remember(None)
        self.event("done", size)
        return self.stats

    # --- sessions ----------------------------------------------------------------------------------
    def start(self) -> str:
        resp = self.client.do_request(
            self.client.url(f"/v2/{self.repo}/blobs/uploads/"), "POST", headers={"Content-Length": "0"}
        )
        self.client.check(resp, 202, what=f"start upload of {self.digest}")
        return self.session(resp)

    def session(self, resp: requests.Response) -> str:
        """The session a 202 answer opened: its URL, and the registry's smallest chunk."""
        location = self.location_of(resp)
        minimum = resp.headers.get("OCI-Chunk-Min-Length", "")
        resp.close()
        if not location:
            raise RegistryError(f"{self.client.host} started an upload without a Location header")
        if minimum.isdigit():
            self.chunk = max(self.chunk, int(minimum))
        self.offset = 0
        return location

    def resume(self) -> str | None:
        """The recorded session of an interrupted push, with ``self.offset`` set from the registry."""
        if self.store is None:
            return None
        location = self.store.upload_location(self.client.host, self.repo, self.digest)
        if location is None:
            return None
        offset, location = self.status(location)
        if offset is None or location is None:
            self.remember(None)
            return None
        self.offset = self.stats.resumed = offset
        return location

    def status(self, location: str) -> tuple[int | None, str | None]:
        """(offset, URL) of a session by ``GET``; ``(None, None)`` when the registry no longer has it."""
        resp = self.client.do_request(location, "GET")
        if resp.status_code not in (200, 204):
            resp.close()
            return None, None
        rng = resp.headers.get("Range", "")
        location = self.location_of(resp) or location
        resp.close()
        try:
            end = int(rng.split("-", 1)[1])
        except (IndexError, ValueError):
            return None, None
        return (end + 1 if end > 0 else 0), location

    def mount(self) -> str | None:
        """Try mounting from known repositories; ``None`` (mounted, see stats) or a session URL (202)."""
        if self.store is None:
            return None
        sources = [r for r in self.store.blob_sources(self.digest, self.client.host) if r != self.repo]
        for src in sources[:MOUNT_TRIES]:
            query = f"?mount={quote(self.digest)}&from={quote(src, safe='/')}"
            try:
                resp = self.client.do_request(
                    self.client.url(f"/v2/{self.repo}/blobs/uploads/{query}"), "POST",
                    headers={"Content-Length": "0"},
                )
            except AuthError:  # a token for this repository but not for ``src``: upload instead
                continue
            if resp.status_code == 201:
                resp.close()
                self.stats.mounted_from = src
                return None
            if resp.status_code == 202:  # not mounted: the registry opened an ordinary session
                return self.session(resp)
            resp.close()  # refused (no access to ``src``, …): try the next, else upload
        return None

    # --- bytes -------------------------------------------------------------------------------------
    def body(self, f: BinaryIO, start: int, n: int) -> _Slice:
        """Bytes ``start`` to ``start + n`` of the file as a request body, counted and reported."""
        read = 0

        def on_read(k: int) -> None:
            nonlocal read
            read += k
            self.stats.sent += k
            now = time.monotonic()
            if now - self.last_event > 0.1:
                self.last_event = now
                self.event("pushing", start + read)

        return _Slice(f, start, n, on_read)

    def put_whole(self, f: BinaryIO, location: str) -> str | None:
        """One PUT with the whole blob; ``None`` when done, the session URL when it must go in chunks."""
        size = self.desc.size
        resp = self.client.do_request(
            oras.utils.append_url_params(location, {"digest": self.digest}), "PUT",
            data=self.body(f, 0, size),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        if resp.status_code == 413 and size > MIN_CHUNK:
            resp.close()
            self.chunk = max(MIN_CHUNK, min(self.chunk, size) // 2)
            return location
        self.client.check(resp, 201, 204, what=f"upload of {self.digest}")
        resp.close()
        return None

    def send_chunks(self, f: BinaryIO, location: str) -> str:
        """PATCH the rest of the blob from ``self.offset``; return the session URL to finish with."""
        size, refused = self.desc.size, 0
        self.remember(location)
        while self.offset < size:
            self.check_stop()
            start = self.offset
            n = min(self.chunk, size - start)
            resp = self.client.do_request(
                location, "PATCH", data=self.body(f, start, n),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(n),
                    "Content-Range": f"{start}-{start + n - 1}",
                },
            )
            if resp.status_code in (413, 416) and refused < 8:
                resp.close()
                refused += 1
                if resp.status_code == 413:
                    if n <= MIN_CHUNK:
                        raise RegistryError(f"{self.client.host} refuses upload requests of {n} bytes")
                    self.chunk = max(MIN_CHUNK, n // 2)
                offset, loc = self.status(location)
                if offset is None or loc is None:
                    raise RegistryError(f"{self.client.host} lost the upload session of {self.digest}")
                self.offset, location = offset, loc
                continue
            self.client.check(resp, 202, what=f"upload chunk {start}-{start + n - 1} of {self.digest}")
            location = self.location_of(resp) or location
            resp.close()
            self.offset = start + n
            self.remember(location)
            self.event("pushing", self.offset)
        return location

