"""The local store: an OCI image layout under ``$FF_HOME/store``.

Layout (https://github.com/opencontainers/image-spec/blob/main/image-layout.md)::

    store/oci-layout            {"imageLayoutVersion": "1.0.0"}
    store/index.json            one descriptor per tag, named by org.opencontainers.image.ref.name
    store/blobs/sha256/<hex>    content-addressed blobs
    store/ingest/<hex>.partial  downloads in progress (resumable; never under the final name)
    store/ingest/<hex>.ranges.json      which byte ranges of a parallel-range download have landed
    store/ingest/<hex>.upload-<k>.json  an upload in progress to one registry repository (its URL)
    store/sources/<hex>.json    registry repositories known to hold the blob (for mounts on push)
    store/locks/                file locks

Every write is atomic (temp file in the same folder, fsync, rename: :mod:`registry.atomic`) and every
blob is verified against its digest before it gets its final name. ``index.json`` is rewritten under a
file lock, so concurrent builds and pulls are safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from registry.atomic import atomic_write_bytes, replace_durably
from registry.home import store_dir
from registry.oci import (
    ANNOTATION_REF_NAME,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_LAYOUT_VERSION,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    canonical_json,
    check_digest,
)
from registry.reference import Reference, parse_reference

CHUNK = 1 << 20
_GRAPH_TYPES = frozenset({OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST})


class StoreError(Exception):
    """A store operation failed (missing model, corrupt blob, bad reference)."""


class NotFoundError(StoreError):
    """The reference or blob is not in the store."""


class DigestMismatchError(StoreError):
    """Content did not hash to the digest it claimed."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (temp names carry the pid of their writer)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


TEMP_PREFIX = ".tmp-"
"""Every temp file in ``ingest/`` is ``.tmp-<pid>-<kind>-<random>``: :meth:`Store.clean_ingest` removes
those whose writer is gone."""


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


class Store:
    """A content-addressed OCI image layout with named tags."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or store_dir()).expanduser()
        self.blobs = self.root / "blobs" / "sha256"
        self.ingest = self.root / "ingest"
        self.locks = self.root / "locks"
        for d in (self.blobs, self.ingest, self.locks):
            d.mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            atomic_write_bytes(layout, canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        if not (self.root / "index.json").exists():
            with self.lock("index"):
                if not (self.root / "index.json").exists():
                    self._write_index([])

    # --- locks -------------------------------------------------------------------------------------
    def lock(self, name: str) -> FileLock:
        """A cross-process lock; use one per blob digest or per reference being written."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return FileLock(str(self.locks / f"{safe}.lock"))

    @contextlib.contextmanager
    def _gc_lock(self, mode: int) -> Iterator[None]:
        fd = os.open(self.locks / "gc.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold (shared) while adding blobs that a tag will reach only later (a build, a pull):
        :meth:`prune` takes the lock exclusively, so it never deletes blobs between their commit and
        the tag that makes them reachable. Any number of writers run at once."""
        with self._gc_lock(fcntl.LOCK_SH):
            yield

    # --- blobs -------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        try:
            check_digest(digest)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        return self.blobs / digest.split(":", 1)[1]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def partial_path(self, digest: str) -> Path:
        """Where a download of ``digest`` in progress lives (resumable, never the final name)."""
        return self.ingest / (self.blob_path(digest).name + ".partial")

    def ranges_path(self, digest: str) -> Path:
        """The record of which ranges of a parallel-range download have landed in its partial file."""
        return self.ingest / (self.blob_path(digest).name + ".ranges.json")

    def commit_hashed(self, tmp: Path, digest: str, size: int) -> None:
        """Give ``tmp`` its final name; the caller hashed every byte it wrote and got ``digest``."""
        if tmp.stat().st_size != size:
            tmp.unlink(missing_ok=True)
            raise DigestMismatchError(f"content is {tmp.stat().st_size} bytes, expected {size}")
        final = self.blob_path(digest)
        if final.exists():
            tmp.unlink(missing_ok=True)
        else:
            replace_durably(tmp, final)

    # --- uploads in progress and where blobs live remotely -------------------------------------------
    def _upload_record(self, host: str, repo: str, digest: str) -> Path:
        key = hashlib.sha256(f"{host}/{repo}".encode()).hexdigest()[:16]
        return self.ingest / f"{self.blob_path(digest).name}.upload-{key}.json"

    def upload_location(self, host: str, repo: str, digest: str) -> str | None:
        """The URL of an interrupted upload of ``digest`` to ``host/repo``, if one was recorded."""
        path = self._upload_record(host, repo, digest)
        try:
            rec = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        ok = isinstance(rec, dict) and rec.get("host") == host and rec.get("repo") == repo
        loc = rec.get("location") if ok else None
        return loc if isinstance(loc, str) else None

    def save_upload_location(self, host: str, repo: str, digest: str, location: str | None) -> None:
        """Record (atomically) or, with ``None``, forget the upload session of ``digest`` at ``host/repo``."""
        path = self._upload_record(host, repo, digest)
        if location is None:
            path.unlink(missing_ok=True)
            return
        body = {"host": host, "repo": repo, "digest": digest, "location": location}
        atomic_write_bytes(path, json.dumps(body, sort_keys=True).encode())

    def _measured_path(self, digest: str) -> Path:
        return self.root / "measured" / self.blob_path(digest).name

    def mark_measured(self, digest: str) -> None:
        """Record that this ff's own verify stage wrote the report blob ``digest`` (``verify.json``): a
        report that came with a pull is a claim of whoever pushed it, and is never marked."""
        path = self._measured_path(digest)
        path.parent.mkdir(exist_ok=True)
        atomic_write_bytes(path, b"", mode=0o644)

    def measured_here(self, digest: str) -> bool:
        """Whether :meth:`mark_measured` recorded ``digest``."""
        return self._measured_path(digest).is_file()

    def _sources_path(self, digest: str) -> Path:
        return self.root / "sources" / self.blob_path(digest).name

    def blob_sources(self, digest: str, host: str) -> list[str]:
        """Repositories of ``host`` that ff pulled ``digest`` from or pushed it to, latest first."""
        try:
            rec = json.loads(self._sources_path(digest).read_bytes())
        except (OSError, ValueError):
            return []
        repos = rec.get(host) if isinstance(rec, dict) else None
        return [r for r in repos if isinstance(r, str)] if isinstance(repos, list) else []

    def add_blob_sources(self, digests: Iterable[str], host: str, repo: str) -> None:
        """Remember that ``host/repo`` holds each of ``digests`` (at most 8 repositories a host)."""
        (self.root / "sources").mkdir(exist_ok=True)
        for digest in set(digests):
            path = self._sources_path(digest)
            with self.lock("sources-" + path.name):
                try:
                    rec = json.loads(path.read_bytes())
                except (OSError, ValueError):
                    rec = {}
                rec = rec if isinstance(rec, dict) else {}
                old = [r for r in rec.get(host) or [] if isinstance(r, str) and r != repo]
                rec[host] = [repo, *old][:8]
                atomic_write_bytes(path, json.dumps(rec, sort_keys=True).encode(), mode=0o644)

    def commit_file(
        self, tmp: Path, expected_digest: str | None = None, expected_size: int | None = None
    ) -> tuple[str, int]:
        """Verify ``tmp`` (in the same file system) and move it to its final content-addressed name."""
        digest, size = sha256_file(tmp)
        if expected_digest is not None and digest != expected_digest:
            tmp.unlink(missing_ok=True)
            raise DigestMismatchError(f"content hashes to {digest}, expected {expected_digest}")
        if expected_size is not None and size != expected_size:
            tmp.unlink(missing_ok=True)
            raise DigestMismatchError(f"content is {size} bytes, expected {expected_size}")
        final = self.blob_path(digest)
        if final.exists():
            tmp.unlink(missing_ok=True)
        else:
            replace_durably(tmp, final)
        return digest, size

    def temp_file(self, kind: str) -> Path:
        """A new empty temp file in ``ingest/`` (same file system as the blobs), named for clean-up."""
        fd, name = tempfile.mkstemp(dir=self.ingest, prefix=f"{TEMP_PREFIX}{os.getpid()}-{kind}-")
        os.close(fd)
        return Path(name)

    def clean_ingest(self) -> list[Path]:
        """Remove temp files that killed writers left in ``ingest/`` (``.partial`` downloads stay)."""
        removed = []
        for tmp in self.ingest.glob(TEMP_PREFIX + "*"):
            try:
                pid = int(tmp.name[len(TEMP_PREFIX) :].split("-", 1)[0])
            except ValueError:
                continue
            if not pid_alive(pid):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        return removed

    def add_file(
        self,
        src: Path,
        *,
        move: bool = False,
        link: bool = False,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        hashed_as: tuple[int, int, int] | None = None,
    ) -> tuple[str, int]:
        """Add a file as a blob, verified against ``expected_digest``/``expected_size`` when given:
        copied; moved when ``move``; hard-linked when ``link`` (only for files nobody will edit in place,
        such as build outputs) and the file system allows, else copied.

        ``hashed_as``: the (inode, size, mtime_ns) of ``src`` when the caller hashed it to
        ``expected_digest`` in this process; a hard link to that very inode, unchanged since, is that
        content, so it is not read and hashed a second time (a copy always is)."""
        if expected_digest is not None and self.has_blob(expected_digest):
            return expected_digest, self.blob_path(expected_digest).stat().st_size
        tmp = self.temp_file("add")
        try:
            done = False
            if move or link:
                tmp.unlink()
                try:
                    if move:
                        os.replace(src, tmp)
                    else:
                        os.link(src, tmp)
                    done = True
                except OSError:
                    pass
            if not done:
                shutil.copyfile(src, tmp)
            elif link and expected_digest is not None and hashed_as is not None:
                st = tmp.stat()
                if (st.st_ino, st.st_size, st.st_mtime_ns) == hashed_as:
                    self.commit_hashed(tmp, expected_digest, st.st_size)
                    return expected_digest, st.st_size
            return self.commit_file(tmp, expected_digest, expected_size)
        finally:
            tmp.unlink(missing_ok=True)

    def add_bytes(self, data: bytes) -> tuple[str, int]:
        """Store ``data`` as a blob (written in ``ingest/`` under a temp name, so a killed writer
        leaves nothing among the blobs and :meth:`clean_ingest` removes what it left)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        final = self.blob_path(digest)
        if not final.exists():
            tmp = self.temp_file("bytes")
            try:
                tmp.write_bytes(data)
                self.commit_file(tmp, digest, len(data))
            finally:
                tmp.unlink(missing_ok=True)
        return digest, len(data)

    def add_stream(
        self, chunks: Iterable[bytes], expected_digest: str, expected_size: int | None = None
    ) -> int:
        """Write a stream as blob ``expected_digest``; it gets its final name only if it verifies."""
        tmp = self.temp_file("stream")
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            return self.commit_file(tmp, expected_digest, expected_size)[1]
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read_blob(self, digest: str, *, max_size: int | None = None) -> bytes:
        path = self.blob_path(digest)
        if not path.is_file():
            raise NotFoundError(f"blob {digest} is not in the store")
        if max_size is not None and path.stat().st_size > max_size:
            raise StoreError(f"blob {digest} is larger than {max_size} bytes")
        data = path.read_bytes()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatchError(f"blob {digest} in the store is corrupt")
        return data

    def read_json(self, digest: str) -> dict[str, Any]:
        obj = json.loads(self.read_blob(digest, max_size=MAX_MANIFEST_BYTES))
        if not isinstance(obj, dict):
            raise StoreError(f"blob {digest} is not a JSON object")
        return obj

    def add_json(self, obj: dict[str, Any], media_type: str) -> Descriptor:
        """Store a manifest/index/config as canonical JSON and return its descriptor."""
        digest, size = self.add_bytes(canonical_json(obj))
        return Descriptor(media_type=media_type, digest=digest, size=size)

    # --- tags --------------------------------------------------------------------------------------
    def _read_index(self) -> list[dict[str, Any]]:
        data = json.loads((self.root / "index.json").read_bytes())
        manifests = data.get("manifests", [])
        return list(manifests) if isinstance(manifests, list) else []

    def _write_index(self, manifests: list[dict[str, Any]]) -> None:
        manifests = sorted(manifests, key=lambda d: (d.get("annotations") or {}).get(ANNOTATION_REF_NAME, ""))
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        atomic_write_bytes(self.root / "index.json", json.dumps(body, indent=2, sort_keys=True).encode())

    @staticmethod
    def ref_name(ref: str | Reference) -> str:
        r = parse_reference(ref) if isinstance(ref, str) else ref
        if r.tag is None:
            raise StoreError(f"{r}: a tag is needed to name a model in the store")
        return f"{r.name}:{r.tag}"

    def tag(self, ref: str | Reference, desc: Descriptor) -> None:
        """Point ``ref`` at ``desc`` (an index or manifest already in the store)."""
        name = self.ref_name(ref)
        if not self.has_blob(desc.digest):
            raise NotFoundError(f"cannot tag {name}: {desc.digest} is not in the store")
        entry = desc.wire()
        entry["annotations"] = {**(desc.annotations or {}), ANNOTATION_REF_NAME: name}
        with self.lock("index"):
            manifests = [
                m for m in self._read_index() if (m.get("annotations") or {}).get(ANNOTATION_REF_NAME) != name
            ]
            manifests.append(entry)
            self._write_index(manifests)

    def untag(self, ref: str | Reference) -> bool:
        name = self.ref_name(ref)
        with self.lock("index"):
            before = self._read_index()
            after = [m for m in before if (m.get("annotations") or {}).get(ANNOTATION_REF_NAME) != name]
            if len(after) == len(before):
                return False
            self._write_index(after)
            return True

    def resolve(self, ref: str | Reference) -> Descriptor:
        """The descriptor a reference points at; a digest reference resolves to that blob."""
        r = parse_reference(ref) if isinstance(ref, str) else ref
        if r.digest is not None and r.tag is None:
            if not self.has_blob(r.digest):
                raise NotFoundError(f"{r} is not in the store")
            obj = self.read_json(r.digest)
            return Descriptor(
                media_type=str(obj.get("mediaType", "")),
                digest=r.digest,
                size=self.blob_path(r.digest).stat().st_size,
            )
        name = self.ref_name(r)
        for m in self._read_index():
            if (m.get("annotations") or {}).get(ANNOTATION_REF_NAME) == name:
                desc = Descriptor.model_validate(m)
                if r.digest is not None and desc.digest != r.digest:
                    raise NotFoundError(f"{name} is {desc.digest}, not the pinned {r.digest}")
                return desc
        raise NotFoundError(f"model {name!r} is not in the store (see `ff list`)")

    def tags(self) -> list[tuple[str, Descriptor]]:
        out = []
        for m in self._read_index():
            name = (m.get("annotations") or {}).get(ANNOTATION_REF_NAME)
            if name:
                out.append((name, Descriptor.model_validate(m)))
        return out

    # --- graph walking and pruning -----------------------------------------------------------------
    def children(self, digest: str) -> Iterator[tuple[str, str]]:
        """``(digest, mediaType)`` of what a manifest or index blob references (config, layers, child
        manifests); a blob that is not a well-formed manifest or index is a :class:`StoreError`."""
        obj = self.read_json(digest)
        try:
            if "manifests" in obj:
                for d in Index.model_validate(obj).manifests:
                    yield d.digest, d.media_type
            else:
                m = Manifest.model_validate(obj)
                for d in (m.config, *m.layers):
                    yield d.digest, d.media_type
        except ValueError as exc:
            raise StoreError(f"manifest {digest} is malformed: {exc}") from None

    def reachable(self, roots: Iterable[str]) -> set[str]:
        """Every blob reachable from ``roots`` (manifests or indexes, as tags point at). Only children
        whose descriptor says they are a manifest or an index are descended into, never layers."""
        seen: set[str] = set()
        stack: list[tuple[str, str | None]] = [(d, None) for d in roots]
        while stack:
            d, media_type = stack.pop()
            if d in seen or not self.has_blob(d):
                continue
            seen.add(d)
            if media_type is None or media_type in _GRAPH_TYPES:
                stack.extend(self.children(d))
        return seen

    def prune(self) -> list[tuple[str, int]]:
        """Delete blobs no tag reaches (after builds and pulls in progress finish); return them.

        Resumable downloads in ``ingest/`` are kept. A tagged manifest that cannot be read stops the
        prune with a :class:`StoreError` rather than deleting what it may reference."""
        removed: list[tuple[str, int]] = []
        with self._gc_lock(fcntl.LOCK_EX), self.lock("index"):
            keep = self.reachable(d.digest for _, d in self.tags())
            for path in self.blobs.iterdir():
                digest = "sha256:" + path.name
                if digest not in keep:
                    size = path.stat().st_size
                    path.unlink(missing_ok=True)
                    (self.root / "sources" / path.name).unlink(missing_ok=True)
                    removed.append((digest, size))
        return removed
