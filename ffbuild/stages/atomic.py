"""Atomic file outputs: a stage writes to a temp file next to its destination and renames it into place.

A process killed at any moment leaves either the old destination (or none) and perhaps a hidden
``.<name>.tmp-…`` file, never a half-written destination.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from registry.store import fsync_dir


@contextlib.contextmanager
def atomic_output(dst: Path) -> Iterator[Path]:
    """Yield a temp path in ``dst``'s folder; on success fsync it and rename it to ``dst``.

    On an exception the temp file is removed and ``dst`` is left as it was.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
