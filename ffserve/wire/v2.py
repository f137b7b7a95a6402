"""Open Inference Protocol v2 (KServe / Triton) bodies: JSON tensors and the binary tensor extension.

A request is a JSON header, optionally followed by raw tensor bytes: ``Inference-Header-Content-Length``
says how long the header is, and each input with ``parameters.binary_data_size`` takes that many bytes
of what follows, in order. Outputs are returned as JSON ``data`` or, when asked (``binary_data_output``
for all, an output's own ``binary_data``), as raw bytes after the JSON header. Tensors are converted
through :mod:`ffruntime.tensors`, the one table of datatypes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ffruntime.runtime import RequestRejected, Tensor
from ffruntime.tensors import DATATYPES, element_count, encode_bytes, to_array
from ffserve.encoding import dumps
from ffserve.errors import BadRequest, mapped_error

HEADER_LENGTH: Final = "inference-header-content-length"
Param = str | int | float | bool


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputTensor(_Wire):
    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(max_length=16)
    datatype: str
    parameters: dict[str, Param] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(_Wire):
    name: str = Field(min_length=1, max_length=256)
    parameters: dict[str, Param] = Field(default_factory=dict)


class InferRequest(_Wire):
    id: str | None = Field(default=None, max_length=256)
    parameters: dict[str, Param] = Field(default_factory=dict)
    inputs: list[InputTensor] = Field(min_length=1, max_length=64)
    outputs: list[RequestedOutput] | None = Field(default=None, max_length=64)


def _flatten(data: Any, out: list[Any], depth: int = 0) -> None:
    if depth > 16:
        raise BadRequest("tensor data nests deeper than 16 levels")
    if isinstance(data, list):
        for item in data:
            _flatten(item, out, depth + 1)
    else:
        out.append(data)


def _json_tensor(t: InputTensor) -> Tensor:
    """An input given as JSON ``data`` → raw bytes."""
    values: list[Any] = []
    _flatten(t.data, values)
    n = element_count(t.shape)
    if len(values) != n:
        raise BadRequest(f"input {t.name}: shape {t.shape} holds {n} elements, data has {len(values)}")
    if t.datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise BadRequest(f"input {t.name}: BYTES data must be strings")
        return "BYTES", t.shape, encode_bytes([v.encode("utf-8") for v in values])
    if t.datatype == "BOOL":
        if not all(isinstance(v, bool) for v in values):
            raise BadRequest(f"input {t.name}: BOOL data must be true or false")
        return "BOOL", t.shape, np.asarray(values, dtype=bool).tobytes()
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        raise BadRequest(f"input {t.name}: {t.datatype} data must be numbers")
    try:
        if t.datatype == "BF16":
            bits = np.asarray(values, dtype="<f4").view("<u4") >> 16
            return "BF16", t.shape, bits.astype("<u2").tobytes()
        kind = np.dtype(DATATYPES[t.datatype])
        if kind.kind in "iu":
            if not all(isinstance(v, int) for v in values):
                raise BadRequest(f"input {t.name}: {t.datatype} data must be integers")
            info = np.iinfo(kind)
            if any(v < info.min or v > info.max for v in values):
                raise BadRequest(f"input {t.name}: a value is outside the range of {t.datatype}")
            return t.datatype, t.shape, np.asarray(values, dtype=kind).tobytes()
        with np.errstate(over="raise"):
            arr = np.asarray(values, dtype=np.float64).astype(kind)
        return t.datatype, t.shape, arr.tobytes()
    except (OverflowError, FloatingPointError):
        raise BadRequest(f"input {t.name}: a value is outside the range of {t.datatype}") from None


def validate_request(doc: object) -> InferRequest:
    """A decoded request document (REST's JSON header, or a gRPC request made into one) → the request."""
    if not isinstance(doc, dict):
        raise BadRequest("the request must be a JSON object")
    try:
        return InferRequest.model_validate(doc)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise BadRequest(f"invalid request: {errs}") from None


RawFor = Callable[[int, InputTensor], bytes | None]
"""The raw bytes of input ``i`` (``None``: it carries ``data``), raising :class:`BadRequest` when they do
not fit: REST slices them off the binary tail, gRPC takes ``raw_input_contents[i]``."""


def input_tensors(req: InferRequest, raw_for: RawFor) -> dict[str, Tensor]:
    """Every input of ``req`` as a checked :data:`Tensor` (the one validation REST and gRPC share)."""
    tensors: dict[str, Tensor] = {}
    for i, t in enumerate(req.inputs):
        if t.name in tensors:
            raise BadRequest(f"input {t.name} is given twice")
        if t.datatype not in DATATYPES:
            raise BadRequest(
                f"input {t.name}: unknown datatype {t.datatype!r} (known: {', '.join(DATATYPES)})"
            )
        try:
            raw = raw_for(i, t)
            if raw is not None:
                tensors[t.name] = (t.datatype, t.shape, raw)
                to_array(tensors[t.name])  # checks the size against the shape now, as a 400
            elif t.data is None:
                raise BadRequest(f"input {t.name} has neither data nor binary_data_size")
            else:
                tensors[t.name] = _json_tensor(t)
        except RequestRejected as exc:
            raise mapped_error(exc, f"input {t.name}: {exc}") from None
    return tensors


def parse_infer(body: bytes, header_length: str | None) -> tuple[InferRequest, dict[str, Tensor]]:
    """The request and its inputs as :data:`Tensor` s, from the body (JSON, or JSON + binary)."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequest(f"Inference-Header-Content-Length {header_length!r} does not fit the body")
        head, binary = body[: int(header_length)], body[int(header_length) :]
    else:
        head, binary = body, b""
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request header is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the request nests too deeply") from None
    req = validate_request(doc)
    pos = 0

    def sliced(_: int, t: InputTensor) -> bytes | None:
        nonlocal pos
        size = t.parameters.get("binary_data_size")
        if size is None:
            return None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or pos + size > len(binary):
            raise BadRequest(f"input {t.name}: binary_data_size {size!r} does not fit the binary data")
        pos += size
        return binary[pos - size : pos]

    tensors = input_tensors(req, sliced)
    if pos != len(binary):
        raise BadRequest(f"{len(binary) - pos} bytes of binary data belong to no input")
    return req, tensors


def _json_data(t: Tensor) -> list[Any]:
    datatype, _, _ = t
    arr = to_array(t).reshape(-1)
    if datatype == "BYTES":
        return [bytes(x).decode("utf-8", errors="replace") for x in arr]
    if datatype == "BF16":
        return (arr.astype("<u4") << 16).view("<f4").astype(float).tolist()  # type: ignore[no-any-return]
    return arr.tolist()


def wants_binary(req: InferRequest, name: str) -> bool:
    default = bool(req.parameters.get("binary_data_output", False))
    for o in req.outputs or ():
        if o.name == name and "binary_data" in o.parameters:
            return bool(o.parameters["binary_data"])
    return default


def infer_response(
    model: str, req: InferRequest, outputs: Mapping[str, Tensor], order: Sequence[str]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it (else None)."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in order:
        datatype, shape, raw = outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if wants_binary(req, name):
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(outputs[name])
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "outputs": entries}
    if req.id is not None:
        doc["id"] = req.id
    head = dumps(doc)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
