"""The build cache: stage outputs under ``$FF_HOME/cache``, keyed by the sha256 of their inputs.

A stage's key is the digest of its name, its options, the versions of the tools it runs and the
digests of its input files (:func:`stage_key`). An entry is a folder ``<stage>/<key>/`` holding the
stage's output files and ``entry.json``; it is produced in a temp folder next to it and renamed into
place under a file lock, so a process killed at any moment leaves either no entry or a complete one.
Leftover temp folders of dead builds are removed when the cache is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from registry.atomic import replace_durably
from registry.home import cache_dir
from registry.oci import canonical_json
from registry.store import pid_alive, sha256_file

CacheValue = str | int | float | bool | None | list["CacheValue"] | dict[str, "CacheValue"]

_TMP_PREFIX = ".tmp-"
_ENTRY_FILE = "entry.json"
_DIGESTS = "digests"  # source files' sha256 by (device, inode, size, mtime, ctime): BuildCache.source_digest
_DIGEST_TEXT = re.compile(r"sha256:[0-9a-f]{64}")
_SETTLED_NS = 2_000_000_000


class CacheError(Exception):
    """The cache folder cannot be used (permissions, a corrupt entry that cannot be removed)."""


_digest_memo: dict[tuple[int, int, int, int], str] = {}
"""sha256 by (device, inode, size, mtime_ns): the file hashed, wherever it was renamed to since."""


def file_digest(path: Path) -> str:
    """sha256 of a file, remembered per (device, inode, size, mtime) for this process."""
    st = path.stat()
    memo_key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if memo_key not in _digest_memo:
        _digest_memo[memo_key] = sha256_file(path)[0]
    return _digest_memo[memo_key]


class DigestMeanwhile:
    """Hash a file (:func:`file_digest`, remembered) in a background thread from :meth:`start` until the
    ``with`` block ends: a producer starts it on its finished output before the fsync that makes it
    durable, so the disk's time and the hash's CPU time overlap instead of adding up."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def start(self, path: Path) -> None:
        def work() -> None:
            with contextlib.suppress(OSError):  # the block failed and removed it: nothing to remember
                file_digest(path)

        self._thread = threading.Thread(target=work, name="ff-digest")
        self._thread.start()

    def __enter__(self) -> DigestMeanwhile:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._thread.join()


def hashed_stat(path: Path, digest: str) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of ``path`` when this process hashed it, as it is now, to ``digest``
    (:func:`file_digest`); the store then links it without reading it again."""
    st = path.stat()
    if _digest_memo.get((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)) != digest:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _folder_files(folder: Path) -> list[tuple[str, Path]]:
    """The files :func:`folder_digest` covers: (relative name, path), in sorted order."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".cache/") or "/." in "/" + rel:
            continue  # huggingface_hub's download metadata, editor files
        files.append((rel, path))
    return files


def folder_digest(folder: Path, digest: Callable[[Path], str] = file_digest) -> str:
    """A digest of a folder's regular files: relative names and content digests, in sorted order."""
    h = hashlib.sha256()
    for rel, path in _folder_files(folder):
        h.update(rel.encode() + b"\0" + digest(path).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def path_digest(path: Path) -> str:
    return folder_digest(path) if path.is_dir() else file_digest(path)


def stage_key(stage: str, **inputs: CacheValue) -> str:
    """The cache key of a stage run: sha256 over its name and canonical JSON of its inputs."""
    return hashlib.sha256(canonical_json({"stage": stage, "inputs": inputs})).hexdigest()


@dataclass(frozen=True)
class Entry:
    """A complete cache entry: its folder and the small JSON document the stage stored with it."""

    path: Path
    meta: dict[str, CacheValue]

    def file(self, name: str) -> Path:
        return self.path / name


def _settled(before: os.stat_result, after: os.stat_result) -> bool:
    """Whether a file read between two ``stat`` s is safe to remember by its times: unchanged meanwhile,
    and last changed long enough ago (git's "racy" case: a write later within the same timestamp tick
    would leave every time as it was)."""
    same = (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )
    return same and time.time_ns() - max(after.st_mtime_ns, after.st_ctime_ns) > _SETTLED_NS


class BuildCache:
    """Stage outputs keyed by input digests; see the module docstring for the guarantees."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or cache_dir()).expanduser()
        self.locks = self.root / "locks"
        self.locks.mkdir(parents=True, exist_ok=True)
        self.hits: list[str] = []
        self.misses: list[str] = []
        self._clean_stale()

    def _clean_stale(self) -> None:
        """Remove temp folders left by builds that were killed (their pid is gone)."""
        for stage_dir in self.root.iterdir():
            if not stage_dir.is_dir() or stage_dir == self.locks:
                continue
            for tmp in stage_dir.glob(_TMP_PREFIX + "*"):
                try:
                    pid = int(tmp.name.split("-")[1])
                except (IndexError, ValueError):
                    pid = -1
                if pid <= 0 or not pid_alive(pid):
                    if tmp.is_dir():
                        shutil.rmtree(tmp, ignore_errors=True)
                    else:
                        tmp.unlink(missing_ok=True)

    def _lock(self, stage: str, key: str) -> FileLock:
        return FileLock(str(self.locks / f"{stage}-{key}.lock"))

    def _entry_dir(self, stage: str, key: str) -> Path:
        if not stage.isidentifier() or len(key) != 64:
            raise CacheError(f"bad cache key {stage}/{key}")
        return self.root / stage / key

    def _known_digest_file(self, st: os.stat_result) -> Path:
        return (
            self.root / _DIGESTS / f"{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}"
        )

    def known_digest(self, path: Path) -> str | None:
        """The sha256 a build of this cache found for ``path`` as it is now (the same device, inode, size,
        modification and change times, as git's index trusts them), or None."""
        try:
            text = self._known_digest_file(path.stat()).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return None
        return text if _DIGEST_TEXT.fullmatch(text) else None

    def source_digest(self, path: Path) -> str:
        """:func:`file_digest` of a build's source file, remembered across builds: a rebuild of an
        unchanged source knows its cache keys without reading it again (and so starts no converter
        before them)."""
        known = self.known_digest(path)
        if known is not None:
            return known
        before = path.stat()
        digest = file_digest(path)
        after = path.stat()
        if _settled(before, after):
            record = self._known_digest_file(before)
            tmp = record.with_name(f"{_TMP_PREFIX}{os.getpid()}-{record.name}")
            with contextlib.suppress(OSError):  # unremembered: the next build reads it again
                record.parent.mkdir(exist_ok=True)
                tmp.write_text(digest, encoding="ascii")
                tmp.replace(record)
        return digest

    def folder_digest(self, folder: Path) -> str:
        """:func:`folder_digest`, each file's digest remembered (:meth:`source_digest`)."""
        return folder_digest(folder, self.source_digest)

    def knows_folder(self, folder: Path) -> bool:
        """Whether :meth:`folder_digest` of ``folder`` would read no file (every one is remembered)."""
        try:
            return all(self.known_digest(path) is not None for _, path in _folder_files(folder))
        except OSError:
            return False

    def scratch(self, stage: str) -> Path:
        """A new empty folder beside ``stage``'s entries (so its files can be renamed into one), for
        work started before its key is known; the caller removes it, or the next cache opened after
        this process died does (:meth:`_clean_stale`)."""
        if not stage.isidentifier():
            raise CacheError(f"bad cache stage {stage!r}")
        parent = self.root / stage
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=parent, prefix=f"{_TMP_PREFIX}{os.getpid()}-"))

    def get(self, stage: str, key: str) -> Entry | None:
        """The complete entry for ``key``, or None."""
        path = self._entry_dir(stage, key)
        meta_file = path / _ENTRY_FILE
        if not meta_file.is_file():
            return None
        try:
            meta = json.loads(meta_file.read_bytes())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(meta, dict):
            return None
        return Entry(path, meta)

    def run(
        self,
        stage: str,
        key: str,
        produce: Callable[[Path], dict[str, CacheValue]],
    ) -> tuple[Entry, bool]:
        """Return the entry for ``key``, calling ``produce(folder)`` to make it when it is missing.

        ``produce`` writes its files into the empty folder it is given and returns the metadata to
        keep with them. The returned flag is True on a cache hit.
        """
        found = self.get(stage, key)
        if found is not None:
            self.hits.append(stage)
            return found, True
        final = self._entry_dir(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._lock(stage, key):
            found = self.get(stage, key)  # another build made it while we waited
            if found is not None:
                self.hits.append(stage)
                return found, True
            if final.exists():  # a folder without entry.json cannot come from us; clear it
                shutil.rmtree(final)
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{_TMP_PREFIX}{os.getpid()}-"))
            # mkdtemp names are ".tmp-<pid>-<random>": the pid lets _clean_stale spot dead builds.
            try:
                meta = produce(tmp)
                (tmp / _ENTRY_FILE).write_bytes(canonical_json(meta))
                replace_durably(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        self.misses.append(stage)
        entry = self.get(stage, key)
        if entry is None:
            raise CacheError(f"cache entry {final} vanished right after it was written")
        return entry, False

    def clear(self) -> tuple[int, int]:
        """Delete every entry (each under its lock), stale temp folders and the remembered source digests;
        return (entries, bytes)."""
        count = size = 0
        shutil.rmtree(self.root / _DIGESTS, ignore_errors=True)
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.locks):
            for entry in sorted(stage_dir.iterdir()):
                if entry.name.startswith(_TMP_PREFIX):
                    continue  # a build at work (dead builds' folders went in _clean_stale)
                with self._lock(stage_dir.name, entry.name):
                    size += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                    shutil.rmtree(entry, ignore_errors=True)
                    count += 1
        return count, size
