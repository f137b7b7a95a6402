"""Open Inference Protocol datatypes ↔ numpy, and the raw byte form of a :data:`~ffruntime.runtime.Tensor`.

One table (:data:`DATATYPES`) says how each OIP datatype is stored; the server's wire code and every
tensor backend convert through :func:`to_array` / :func:`from_array`, so a datatype is handled in one
place. ``BYTES`` elements are length-prefixed (4-byte little-endian length, then the bytes) as in the
binary tensor extension; in numpy they are an ``object`` array of ``bytes``. ``BF16`` has no numpy type:
it travels as ``uint16`` bit patterns (the upper half of an IEEE float32).
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ffruntime.runtime import RequestRejected, Tensor

DATATYPES: Final[dict[str, str]] = {
    "BOOL": "bool",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "BF16": "<u2",
    "BYTES": "object",
}
"""OIP datatype → numpy dtype string (``BYTES``: object array of bytes; ``BF16``: uint16 bits)."""

MAX_ELEMENTS: Final = 1 << 28
"""No tensor of more elements is accepted (a shape is hostile input)."""

_ONNX_TYPES: Final = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}


def onnx_datatype(ort_type: str) -> str:
    """ONNX Runtime's type string (``tensor(float)``) → OIP datatype."""
    try:
        return _ONNX_TYPES[ort_type]
    except KeyError:
        raise RequestRejected(f"the model uses the ONNX type {ort_type}, which OIP cannot carry") from None


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The OIP datatype of a numpy array (object/str arrays are ``BYTES``)."""
    kind = array.dtype.kind
    if kind in ("O", "U", "S"):
        return "BYTES"
    for name, dt in DATATYPES.items():
        if name not in ("BF16", "BYTES") and np.dtype(dt) == array.dtype.newbyteorder("<"):
            return name
    raise RequestRejected(f"numpy dtype {array.dtype} has no OIP datatype")


def element_count(shape: list[int] | tuple[int, ...]) -> int:
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise RequestRejected(f"shape {list(shape)} has a negative or non-integer dimension")
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise RequestRejected(f"shape {list(shape)} has {n} elements; at most {MAX_ELEMENTS} are accepted")
    return n


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def decode_bytes(raw: bytes, count: int) -> list[bytes]:
    """``count`` length-prefixed elements from ``raw`` (which must hold exactly them)."""
    out: list[bytes] = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise RequestRejected("BYTES tensor data ends inside an element's length prefix")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise RequestRejected("BYTES tensor data ends inside an element")
        out.append(raw[pos : pos + n])
        pos += n
    if pos != len(raw):
        raise RequestRejected(f"BYTES tensor data has {len(raw) - pos} bytes after its {count} elements")
    return out


def to_array(tensor: Tensor) -> npt.NDArray[Any]:
    """A :data:`Tensor` (datatype, shape, raw bytes) → numpy array, checking its size against its shape."""
    datatype, shape, raw = tensor
    if datatype not in DATATYPES:
        raise RequestRejected(f"unknown datatype {datatype!r} (known: {', '.join(DATATYPES)})")
    n = element_count(shape)
    if datatype == "BYTES":
        arr = np.empty(n, dtype=object)
        arr[:] = decode_bytes(raw, n)
        return arr.reshape(shape)
    dt = np.dtype(DATATYPES[datatype])
    if len(raw) != n * dt.itemsize:
        raise RequestRejected(
            f"a {datatype} tensor of shape {list(shape)} needs {n * dt.itemsize} bytes, got {len(raw)}"
        )
    out: npt.NDArray[Any] = np.frombuffer(raw, dtype=dt).reshape(shape)
    return out


def from_array(array: npt.NDArray[Any], datatype: str | None = None) -> Tensor:
    """A numpy array → :data:`Tensor` (``datatype`` forces e.g. ``BF16`` for uint16 bits)."""
    dt = datatype or datatype_of(array)
    shape = [int(d) for d in array.shape]
    if dt == "BYTES":
        items = [x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1)]
        return dt, shape, encode_bytes(items)
    return dt, shape, np.ascontiguousarray(array, dtype=np.dtype(DATATYPES[dt])).tobytes()
