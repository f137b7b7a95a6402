"""Open Inference Protocol v2 with the unmodified tritonclient[http] client against a real ``ff serve``:
a scikit-learn classifier (iris) built from its skl2onnx graph, and a graph carrying every datatype."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tensor_models import DTYPES, dtypes_model, iris_model, prepare_home
from tritonclient.utils import InferenceServerException

from tests.ffserve.serve_testkit import Server, start_server


@pytest.fixture(scope="module")
def v2_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, np.ndarray]:
    home = prepare_home(tmp_path_factory.mktemp("v2home"))
    clf, x = iris_model(home, tmp_path_factory.mktemp("iris"))
    dtypes_model(home, tmp_path_factory.mktemp("dtypes"))
    return home, clf, x


@pytest.fixture(scope="module")
def v2_server(
    v2_home: tuple[Path, object, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with start_server(v2_home[0], tmp_path_factory.mktemp("v2logs"), FF_QUANTIZE="", FF_API_KEYS="") as s:
        yield s


def _client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def test_iris_predictions_match_scikit_learn(
    v2_server: Server, v2_home: tuple[Path, object, np.ndarray]
) -> None:
    _, clf, x = v2_home
    c = _client(v2_server)
    assert c.is_server_live() and c.is_server_ready()
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
    meta = c.get_model_metadata("iris")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    assert c.is_model_ready("iris")
    for binary in (True, False):
        inp = triton.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
        r = c.infer("iris", [inp], outputs=outs)
        assert r.as_numpy("label").tolist() == clf.predict(x).tolist()  # type: ignore[attr-defined]
        np.testing.assert_allclose(r.as_numpy("probabilities"), clf.predict_proba(x), atol=1e-5)  # type: ignore[attr-defined]
    shown = httpx.post(v2_server.url + "/api/show", json={"model": "iris"}).json()
    assert shown["capabilities"] == [] and shown["details"]["format"] == "onnx"
    r = httpx.post(v2_server.url + "/api/generate", json={"model": "iris", "prompt": "hi"})
    assert r.status_code == 400 and "does not support" in r.json()["error"]
    only = c.infer("iris", [inp], outputs=[triton.InferRequestedOutput("label")])
    assert only.as_numpy("probabilities") is None and only.as_numpy("label") is not None


def test_concurrent_requests_are_batched_and_answered_each(
    v2_server: Server, v2_home: tuple[Path, object, np.ndarray]
) -> None:
    _, clf, x = v2_home
    c = triton.InferenceServerClient(v2_server.url.removeprefix("http://"), concurrency=16)
    handles = []
    for i in range(0, 150, 3):
        inp = triton.InferInput("X", [1, 4], "FP32")
        inp.set_data_from_numpy(x[i : i + 1])
        handles.append(c.async_infer("iris", [inp]))
    got = [h.get_result().as_numpy("label").tolist()[0] for h in handles]
    assert got == clf.predict(x[::3]).tolist()  # type: ignore[attr-defined]


def test_every_datatype_round_trips(v2_server: Server) -> None:
    c = _client(v2_server)
    samples = {
        "BOOL": np.array([[True, False], [False, True]]),
        "BYTES": np.array([[b"a", "é".encode()], [b"", b"x" * 100]], dtype=object),
    }
    for dt in DTYPES:
        arr = samples.get(dt)
        if arr is None:
            np_type = triton.triton_to_np_dtype(dt) if hasattr(triton, "triton_to_np_dtype") else None
            from tritonclient.utils import triton_to_np_dtype

            arr = (np.arange(4).reshape(2, 2) * 3).astype(np_type or triton_to_np_dtype(dt))
        for binary in (True, False):
            inp = triton.InferInput(f"in_{dt}", [2, 2], dt)
            inp.set_data_from_numpy(arr, binary_data=binary)
            r = c.infer(
                "dtypes",
                [inp] + [_zero(d) for d in DTYPES if d != dt],
                outputs=[triton.InferRequestedOutput(f"out_{dt}", binary_data=binary)],
            )
            got = r.as_numpy(f"out_{dt}")
            assert got is not None
            if dt == "BYTES":  # JSON carries strings, binary data bytes (as Triton does)
                got = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(got)
            assert got.tolist() == arr.tolist(), (dt, binary)


def _zero(dt: str) -> triton.InferInput:
    from tritonclient.utils import triton_to_np_dtype

    inp = triton.InferInput(f"in_{dt}", [1, 2], dt)
    arr = (
        np.array([[b"", b""]], dtype=object)
        if dt == "BYTES"
        else np.zeros((1, 2), dtype=triton_to_np_dtype(dt))
    )
    inp.set_data_from_numpy(arr)
    return inp


def test_errors_are_json_with_the_right_status(v2_server: Server) -> None:
    c = _client(v2_server)
    with pytest.raises(InferenceServerException) as err:
        c.get_model_metadata("no-such-model")
    assert err.value.status() == "404"
    inp = triton.InferInput("X", [2, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="shape") as err:
        c.infer("iris", [inp])
    assert err.value.status() == "400"
    wrong = triton.InferInput("X", [1, 4], "INT32")
    wrong.set_data_from_numpy(np.zeros((1, 4), dtype=np.int32))
    with pytest.raises(InferenceServerException, match="datatype"):
        c.infer("iris", [wrong])
    url = v2_server.url + "/v2/models/iris/infer"
    for body, message in [
        (b"not json", "not JSON"),
        (b'{"inputs": [{"name": "Y", "shape": [1], "datatype": "FP32", "data": [1]}]}', "unknown input"),
        (
            b'{"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],'
            b' "outputs": [{"name": "nope"}]}',
            "unknown output",
        ),
    ]:
        r = httpx.post(url, content=body)
        assert r.status_code == 400 and message in r.json()["error"], r.text
    r = httpx.post(url, content=b"{}", headers={"Inference-Header-Content-Length": "x"})
    assert r.status_code == 400 and "error" in r.json()
    assert httpx.get(v2_server.url + "/v2/models/iris/infer").status_code == 405


def test_api_keys_guard_v2_but_not_its_health(
    v2_home: tuple[Path, object, np.ndarray], tmp_path: Path
) -> None:
    with start_server(v2_home[0], tmp_path, FF_QUANTIZE="", FF_API_KEYS="sekrit") as s:
        assert httpx.get(s.url + "/v2/health/live").status_code == 200
        r = httpx.get(s.url + "/v2/models/iris")
        assert r.status_code == 401 and "API key" in r.json()["error"]
        c = triton.InferenceServerClient(s.url.removeprefix("http://"))
        assert c.get_model_metadata("iris", headers={"Authorization": "Bearer sekrit"})["name"] == "iris"
        inp = triton.InferInput("X", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        c.infer("iris", [inp], headers={"Authorization": "Bearer sekrit"})
        text = httpx.get(s.url + "/metrics", headers={"Authorization": "Bearer sekrit"}).text
        assert 'ff:e2e_request_latency_seconds_count{model_name="iris:latest"} 1.0' in text
