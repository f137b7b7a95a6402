"""ffserve.encoding: every JSON body is written by one function."""

from __future__ import annotations

import json

import numpy as np

from ffserve.encoding import JSONResponse, dumps


def test_float32_vectors_are_written_in_their_own_shortest_form_and_read_back_exactly() -> None:
    vec = np.array([0.1, 1 / 3, -2.5e-8, 12345.678], dtype=np.float32)
    body = dumps({"embedding": vec})
    assert body == b'{"embedding":[0.1,0.33333334,-2.5e-8,12345.678]}'
    back = np.array(json.loads(body)["embedding"], dtype=np.float32)
    assert np.array_equal(back, vec)  # every float32 survives the trip bit for bit
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert json.loads(dumps({"data": [{"embedding": r} for r in rows]})) == {
        "data": [{"embedding": [0.0, 1.0, 2.0]}, {"embedding": [3.0, 4.0, 5.0]}]
    }


def test_text_is_utf8_and_odd_values_stay_valid_json() -> None:
    body = dumps({"content": "Größe → 東京", 3: float("nan"), "inf": float("inf")})
    assert "Größe → 東京".encode() in body
    assert json.loads(body) == {"content": "Größe → 東京", "3": None, "inf": None}


def test_json_response_renders_with_dumps() -> None:
    r = JSONResponse({"v": np.float32(0.5), "n": [1, 2]}, status_code=400)
    assert r.body == b'{"v":0.5,"n":[1,2]}' and r.status_code == 400
    assert r.headers["content-type"] == "application/json"
