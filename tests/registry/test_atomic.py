"""registry.atomic: the one atomic write (temp file beside the destination, fsync, rename)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from registry.atomic import atomic_output, atomic_write_bytes, replace_durably


def test_write_replaces_the_whole_file_owner_only(tmp_path: Path) -> None:
    dst = tmp_path / "sub" / "config.json"
    atomic_write_bytes(dst, b"first")
    atomic_write_bytes(dst, b"second")
    assert dst.read_bytes() == b"second"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    atomic_write_bytes(dst, b"shared", mode=0o644)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o644 & ~_umask()
    assert os.listdir(dst.parent) == ["config.json"]


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_a_failed_output_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    dst = tmp_path / "model.gguf"
    dst.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(dst) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert dst.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.gguf"]
    with atomic_output(dst) as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["model.gguf"]


def test_a_folder_moves_into_place_whole(tmp_path: Path) -> None:
    src = tmp_path / ".tmp-entry"
    (src / "nested").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a")
    (src / "nested" / "b.bin").write_bytes(b"b")
    replace_durably(src, tmp_path / "entry")
    assert not src.exists()
    assert (tmp_path / "entry" / "nested" / "b.bin").read_bytes() == b"b"
