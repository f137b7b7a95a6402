"""OIP datatypes ↔ numpy ↔ raw bytes (ffruntime.tensors), and the v2 wire format (ffserve.wire.v2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ffruntime.runtime import RequestRejected
from ffruntime.tensors import DATATYPES, from_array, to_array
from ffserve.errors import BadRequest
from ffserve.wire.v2 import InferRequest, infer_response, parse_infer

SAMPLES: dict[str, list[object]] = {
    "BOOL": [True, False, True, True],
    "UINT8": [0, 1, 254, 255],
    "UINT16": [0, 65535, 7, 8],
    "UINT32": [0, 2**32 - 1, 3, 4],
    "UINT64": [0, 2**63, 5, 6],
    "INT8": [-128, 127, 0, -1],
    "INT16": [-32768, 32767, 0, 1],
    "INT32": [-(2**31), 2**31 - 1, 0, 1],
    "INT64": [-(2**63), 2**63 - 1, 0, 1],
    "FP16": [0.5, -2.0, 1024.0, 0.0],
    "FP32": [0.25, -1.5, 2.0**100, 0.0],
    "FP64": [1e300, -1e-300, 0.1, 0.0],
    "BF16": [1.0, -2.0, 0.5, 256.0],
    "BYTES": ["", "héllo", "a\x00b", "x" * 300],
}


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_json_and_binary_inputs_agree_for_every_datatype(datatype: str) -> None:
    values = SAMPLES[datatype]
    head = {
        "inputs": [{"name": "x", "shape": [2, 2], "datatype": datatype, "data": [values[:2], values[2:]]}]
    }
    _, from_json = parse_infer(json.dumps(head).encode(), None)
    raw = from_json["x"][2]
    bin_head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 2],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    _, from_bin = parse_infer(bin_head + raw, str(len(bin_head)))
    assert from_bin == from_json
    arr = to_array(from_json["x"])
    assert arr.shape == (2, 2)
    if datatype == "BYTES":
        assert [x.decode() for x in arr.reshape(-1)] == values
    elif datatype == "BF16":
        assert ((arr.astype("<u4") << 16).view("<f4").reshape(-1)).tolist() == values
    else:
        assert arr.reshape(-1).tolist() == values
    # back out: JSON data gives the values again, binary gives the same bytes
    req = InferRequest.model_validate({"inputs": head["inputs"], "outputs": [{"name": "x"}]})
    body, n = infer_response("m", req, from_json, ["x"])
    assert n is None
    out = json.loads(body)["outputs"][0]
    assert out["shape"] == [2, 2] and out["datatype"] == datatype
    assert out["data"] == [str(v) for v in values] if datatype == "BYTES" else out["data"] == values
    req_bin = InferRequest.model_validate(
        {"inputs": head["inputs"], "parameters": {"binary_data_output": True}}
    )
    body, n = infer_response("m", req_bin, from_json, ["x"])
    assert n is not None and body[n:] == raw
    assert json.loads(body[:n])["outputs"][0]["parameters"]["binary_data_size"] == len(raw)


def test_from_array_round_trips() -> None:
    for arr in (
        np.arange(6, dtype=np.int32).reshape(2, 3),
        np.array([[True], [False]]),
        np.array([b"a", b"bc"], dtype=object),
    ):
        t = from_array(arr)
        back = to_array(t)
        assert back.shape == arr.shape and back.tolist() == arr.tolist()


@pytest.mark.parametrize(
    ("head", "binary", "message"),
    [
        (
            {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]},
            b"",
            "holds 3 elements",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]},
            b"",
            "outside the range",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}]}, b"", "true or false"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["1"]}]},
            b"",
            "must be numbers",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}]}, b"", "must be strings"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}, b"", "unknown datatype"),
        ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}, b"", "negative"),
        (
            {"inputs": [{"name": "x", "shape": [1 << 20, 1 << 20], "datatype": "FP32", "data": []}]},
            b"",
            "at most",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
                ]
            },
            b"\0" * 4,
            "needs 8 bytes",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 9}}
                ]
            },
            b"\0" * 4,
            "does not fit",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
                ]
            },
            b"\0" * 8,
            "belong to no input",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}
                ]
            },
            b"\xff\0\0\0",
            "ends inside",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, b"", "neither data"),
        ({"inputs": []}, b"", "inputs"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2}, b"", "given twice"),
    ],
)
def test_hostile_requests_are_400s(head: dict[str, object], binary: bytes, message: str) -> None:
    raw = json.dumps(head).encode()
    with pytest.raises(BadRequest, match=message):
        parse_infer(raw + binary, str(len(raw)) if binary else None)


def test_header_length_must_fit() -> None:
    with pytest.raises(BadRequest, match="does not fit"):
        parse_infer(b"{}", "99")
    with pytest.raises(BadRequest, match="not JSON"):
        parse_infer(b"\xff\xfe", None)
    with pytest.raises(RequestRejected):
        to_array(("FP32", [2], b"\0" * 4))
