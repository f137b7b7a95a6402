"""A user's own file is copied into the store, never hard-linked: editing it later changes no blob."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ffbuild.stages.context import WeightFile
from ffbuild.stages.package import add_blob
from registry.store import Store


def _wf(path: Path, *, build_owned: bool) -> WeightFile:
    data = path.read_bytes()
    return WeightFile(path, "sha256:" + hashlib.sha256(data).hexdigest(), len(data), build_owned=build_owned)


def test_user_file_is_copied(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    user = tmp_path / "model.gguf"
    user.write_bytes(b"GGUF original weights")
    f = _wf(user, build_owned=False)
    add_blob(store, f)
    blob = store.blob_path(f.digest)
    assert blob.stat().st_nlink == 1 and user.stat().st_nlink == 1
    user.write_bytes(b"GGUF something else entirely")  # the user edits their file in place
    assert store.read_blob(f.digest) == b"GGUF original weights"


def test_build_owned_file_is_linked(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    made = tmp_path / "cache-entry.gguf"
    made.write_bytes(b"GGUF built weights")
    f = _wf(made, build_owned=True)
    add_blob(store, f)
    assert store.blob_path(f.digest).stat().st_nlink == 2  # no second copy of a cache output
    assert store.read_blob(f.digest) == b"GGUF built weights"
