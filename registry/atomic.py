"""Atomic writes, the one implementation: write a temp file beside the destination, fsync it, rename it
into place and fsync the folder.

A process killed at any moment leaves either the old destination (or none) and perhaps a hidden
``.<name>.tmp-<pid>-<random>`` file, never a half-written destination. The store's blobs and index, the
build cache's entries, stage outputs and the Docker config are all written this way.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort where the file system cannot)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src: Path, dst: Path) -> None:
    """Rename ``src`` (a file, or a folder of files) to ``dst`` in the same file system, its content
    flushed to disk first and the rename made durable after."""
    if src.is_dir():
        for path in sorted(src.rglob("*")):
            if path.is_file() and not path.is_symlink():
                _fsync_file(path)
    else:
        _fsync_file(src)
    os.replace(src, dst)
    fsync_dir(dst.parent)


@contextlib.contextmanager
def atomic_output(dst: Path) -> Iterator[Path]:
    """Yield a temp path (not yet created) in ``dst``'s folder; when the block ends without an
    exception, move what was written there to ``dst`` (:func:`replace_durably`).

    On an exception the temp file is removed and ``dst`` is left as it was.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        replace_durably(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix. The file
    written gets ``mode`` (less the umask): owner-only unless asked, as the Docker config must be."""
    with atomic_output(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
