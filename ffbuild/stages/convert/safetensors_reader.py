"""Read a Hugging Face folder's ``*.safetensors`` weights (sharded or not) as memory-mapped numpy arrays.

No torch: the safetensors layout is an 8-byte header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw data. A tensor is a numpy view on the memory-mapped file, so reading
it costs nothing until it is touched, and converting a model never holds two copies of it. bfloat16
(which numpy lacks) is returned as ``uint16`` holding the raw bits; :data:`BF16` marks it.
Headers are validated (sizes, offsets, shard names) so a hostile file gives a :class:`ConvertError`.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ffbuild.stages.errors import ConvertError

BF16 = "BF16"
_DTYPES: dict[str, np.dtype[np.generic]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    BF16: np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_MAX_HEADER = 256 * 1024 * 1024
_SHARD_NAME = re.compile(r"^[\w.\-]+\.safetensors$")


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: its shard, dtype name (safetensors spelling), shape and byte range."""

    name: str
    shard: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int


class SafetensorsFolder:
    """The tensors of a folder's weight files, opened lazily and memory-mapped once per shard."""

    def __init__(self, folder: Path, files: list[Path] | None = None) -> None:
        self.folder = folder
        self.files = files if files is not None else weight_files(folder)
        self.tensors: dict[str, TensorRef] = {}
        for shard in self.files:
            for ref in _read_header(shard):
                if ref.name in self.tensors:
                    raise ConvertError(f"tensor {ref.name!r} is in both {self.tensors[ref.name].shard.name} "
                                       f"and {shard.name}")
                self.tensors[ref.name] = ref
        self._maps: dict[Path, mmap.mmap] = {}

    def __enter__(self) -> SafetensorsFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for m in self._maps.values():
            # a caller may still hold a view; the map then closes when it is collected
            with contextlib.suppress(BufferError):
                m.close()
        self._maps.clear()

    def load(self, name: str) -> npt.NDArray[np.generic]:
        """The tensor as a read-only numpy view on the mapped file (bf16 as uint16 bits)."""
        ref = self.tensors[name]
        m = self._maps.get(ref.shard)
        if m is None:
            with ref.shard.open("rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[ref.shard] = m
        dtype = _DTYPES[ref.dtype]
        count = (ref.end - ref.begin) // dtype.itemsize
        return np.frombuffer(m, dtype=dtype, count=count, offset=ref.begin).reshape(ref.shape)


def weight_files(folder: Path) -> list[Path]:
    """The folder's model weight files: those its ``model.safetensors.index.json`` names, else
    ``model.safetensors``, else every ``*.safetensors`` except adapters (sorted)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConvertError(f"{index}: not a valid safetensors index ({e})") from e
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConvertError(f"{index}: 'weight_map' must be a non-empty object")
        names = sorted({str(v) for v in weight_map.values()})
        for n in names:
            if not _SHARD_NAME.match(n):
                raise ConvertError(f"{index}: shard name {n!r} is not a plain *.safetensors file name")
            if not (folder / n).is_file():
                raise ConvertError(f"{index} names {n}, which is missing from {folder}")
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("adapter_model"))
    if not files:
        raise ConvertError(f"{folder} has no *.safetensors weights (pickled .bin weights are not read)")
    return files


def _read_header(path: Path) -> list[TensorRef]:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ConvertError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw_len)
            if n > min(_MAX_HEADER, size - 8):
                raise ConvertError(f"{path}: not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
    except OSError as e:
        raise ConvertError(f"cannot read {path}: {e.strerror or e}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: safetensors header is not an object")
    base = 8 + n
    refs = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConvertError(f"{path}: bad header entry for tensor {name!r}") from e
        if dtype not in _DTYPES:
            raise ConvertError(
                f"{path}: tensor {name!r} has dtype {dtype}, which the converter does not read "
                f"(supported: {', '.join(_DTYPES)})"
            )
        count = 1
        for d in shape:
            if d < 0:
                raise ConvertError(f"{path}: tensor {name!r} has a negative dimension")
            count *= d
        if end - begin != count * _DTYPES[dtype].itemsize or begin < 0 or base + end > size:
            raise ConvertError(f"{path}: tensor {name!r} has a byte range that does not match its shape "
                               "or lies past the end of the file")
        refs.append(TensorRef(str(name), path, dtype, shape, base + begin, base + end))
    return refs
