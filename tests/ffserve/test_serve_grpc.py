"""The Open Inference Protocol over gRPC (FF_GRPC_PORT) with the unmodified tritonclient[grpc] client
against a real ``ff serve`` with API keys: readiness, metadata, the iris classifier's predictions equal
to scikit-learn's (and to REST's), errors as gRPC status codes, limits, concurrency and metrics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tensor_models import iris_model, prepare_home
from tritonclient.utils import InferenceServerException

from tests.ffserve.serve_testkit import Server, start_server

KEY = "grpc-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def iris_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, np.ndarray]:
    home = prepare_home(tmp_path_factory.mktemp("grpchome"))
    clf, x = iris_model(home, tmp_path_factory.mktemp("iris"))
    return home, clf, x


@pytest.fixture(scope="module")
def grpc_server(
    iris_home: tuple[Path, object, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with start_server(
        iris_home[0],
        tmp_path_factory.mktemp("grpclogs"),
        grpc=True,
        FF_QUANTIZE="",
        FF_API_KEYS=KEY,
        FF_MAX_BODY_BYTES=str(MAX_BODY),
    ) as s:
        yield s


def _client(server: Server) -> tgrpc.InferenceServerClient:
    assert server.grpc is not None
    return tgrpc.InferenceServerClient(server.grpc)


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


def _metric(server: Server, method: str, code: str) -> float:
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    want = f'ff:grpc_responses_total{{code="{code}",method="{method}"}}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(want))


def test_readiness_metadata_and_iris_predictions(
    grpc_server: Server, iris_home: tuple[Path, object, np.ndarray]
) -> None:
    _, clf, x = iris_home
    c = _client(grpc_server)
    assert c.is_server_live() and c.is_server_ready()  # open, as /v2/health/* are
    assert c.get_server_metadata(headers=AUTH, as_json=True)["name"] == "ferrousforge"
    meta = c.get_model_metadata("iris", headers=AUTH, as_json=True)
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": ["-1", "4"]}]  # int64 in JSON
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    assert c.is_model_ready("iris", headers=AUTH)
    inp = tgrpc.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = c.infer("iris", [inp], headers=AUTH, request_id="req-1")
    assert r.get_response().id == "req-1"
    assert r.as_numpy("label").tolist() == clf.predict(x).tolist()  # type: ignore[attr-defined]
    probs = r.as_numpy("probabilities")
    np.testing.assert_allclose(probs, clf.predict_proba(x), atol=1e-5)  # type: ignore[attr-defined]
    only = c.infer("iris", [inp], outputs=[tgrpc.InferRequestedOutput("label")], headers=AUTH)
    assert only.as_numpy("probabilities") is None and only.as_numpy("label") is not None
    # REST's /v2 answers the same numbers (tritonclient.http 2.73 cannot send headers with a binary
    # body: it passes its header length as an int to httpx, so JSON through httpx)
    body = {"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    rest = httpx.post(grpc_server.url + "/v2/models/iris/infer", json=body, headers=AUTH).json()
    by_name = {o["name"]: o for o in rest["outputs"]}
    assert np.array_equal(np.array(by_name["probabilities"]["data"], dtype=np.float32).reshape(-1, 3), probs)
    assert _metric(grpc_server, "ModelInfer", "OK") >= 2


def test_errors_are_grpc_status_codes(
    grpc_server: Server, iris_home: tuple[Path, object, np.ndarray]
) -> None:
    _, _, x = iris_home
    c = _client(grpc_server)
    inp = tgrpc.InferInput("X", [2, 4], "FP32")
    inp.set_data_from_numpy(x[:2])
    for headers in ({"authorization": "Bearer wrong"}, {}):
        with pytest.raises(InferenceServerException) as exc:
            c.infer("iris", [inp], headers=headers)
        assert _status(exc) == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as exc:
        c.get_model_metadata("iris", headers={"authorization": "Bearer wrong"})
    assert _status(exc) == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as exc:
        c.infer("no-such-model", [inp], headers=AUTH)
    assert _status(exc) == "StatusCode.NOT_FOUND" and "not found" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        c.is_model_ready("no-such-model", headers=AUTH)
    assert _status(exc) == "StatusCode.NOT_FOUND"
    bad = tgrpc.InferInput("X", [2, 4], "FP32")
    bad.set_data_from_numpy(x[:2])
    bad.set_shape([3, 4])  # 8 values sent for a [3, 4] tensor
    with pytest.raises(InferenceServerException) as exc:
        c.infer("iris", [bad], headers=AUTH)
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT" and "input X" in exc.value.message()
    wrong_type = tgrpc.InferInput("X", [2, 4], "FP64")
    wrong_type.set_data_from_numpy(x[:2].astype(np.float64))
    with pytest.raises(InferenceServerException) as exc:
        c.infer("iris", [wrong_type], headers=AUTH)
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    big = np.tile(x, (200, 1))  # 120 KB of raw input, over FF_MAX_BODY_BYTES
    inp = tgrpc.InferInput("X", list(big.shape), "FP32")
    inp.set_data_from_numpy(big)
    with pytest.raises(InferenceServerException) as exc:
        c.infer("iris", [inp], headers=AUTH)
    assert _status(exc) == "StatusCode.RESOURCE_EXHAUSTED"
    assert _metric(grpc_server, "ModelInfer", "UNAUTHENTICATED") >= 2
    assert _metric(grpc_server, "ModelInfer", "NOT_FOUND") >= 1
    assert _metric(grpc_server, "ModelInfer", "INVALID_ARGUMENT") >= 2
    assert "Traceback" not in grpc_server.logs()


def test_sixteen_concurrent_clients_each_get_their_answer(
    grpc_server: Server, iris_home: tuple[Path, object, np.ndarray]
) -> None:
    _, clf, x = iris_home
    assert grpc_server.grpc is not None
    address = grpc_server.grpc

    def one(i: int) -> int:
        c = tgrpc.InferenceServerClient(address)
        inp = tgrpc.InferInput("X", [1, 4], "FP32")
        inp.set_data_from_numpy(x[i : i + 1])
        label = c.infer("iris", [inp], headers=AUTH).as_numpy("label")
        assert label is not None
        return int(label[0])

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(0, 150, 3)))
    assert got == clf.predict(x[::3]).tolist()  # type: ignore[attr-defined]


def test_stream_infer_answers_each_request_and_goes_on_after_a_bad_one(
    grpc_server: Server, iris_home: tuple[Path, object, np.ndarray]
) -> None:
    _, clf, x = iris_home
    c = _client(grpc_server)
    got: dict[str, object] = {}
    done = threading.Event()

    def on_answer(result: object, error: InferenceServerException | None) -> None:
        if error is not None:
            got[f"error {len(got)}"] = error
        else:
            got[result.get_response().id] = result  # type: ignore[attr-defined]
        if len(got) == 11:
            done.set()

    c.start_stream(callback=on_answer, headers=AUTH)
    try:
        for i in range(10):
            inp = tgrpc.InferInput("X", [1, 4], "FP32")
            inp.set_data_from_numpy(x[i * 15 : i * 15 + 1])
            c.async_stream_infer("iris", [inp], request_id=f"r{i}")
            if i == 4:  # a bad tensor in the middle: its own error, the stream goes on
                bad = tgrpc.InferInput("X", [2, 4], "FP32")
                bad.set_data_from_numpy(x[:2])
                bad.set_shape([3, 4])  # 8 values sent for a [3, 4] tensor
                c.async_stream_infer("iris", [bad], request_id="bad")
        assert done.wait(60), f"answers: {sorted(got)}"
    finally:
        c.stop_stream()
    labels = [int(got[f"r{i}"].as_numpy("label")[0]) for i in range(10)]  # type: ignore[attr-defined]
    assert labels == clf.predict(x[::15][:10]).tolist()  # type: ignore[attr-defined]
    errors = [v for k, v in got.items() if k.startswith("error")]
    assert len(errors) == 1 and "input X" in errors[0].message()  # type: ignore[attr-defined]
    assert _metric(grpc_server, "ModelStreamInfer", "OK") >= 10
    assert _metric(grpc_server, "ModelStreamInfer", "INVALID_ARGUMENT") >= 1
    wrong = _client(grpc_server)
    refused: list[object] = []
    ended = threading.Event()

    def on_refusal(result: object, error: InferenceServerException | None) -> None:
        refused.append(error)
        ended.set()

    wrong.start_stream(callback=on_refusal, headers={"authorization": "Bearer no"})
    try:
        inp = tgrpc.InferInput("X", [1, 4], "FP32")
        inp.set_data_from_numpy(x[:1])
        try:
            wrong.async_stream_infer("iris", [inp])
        except InferenceServerException as e:  # the refusal can end the stream before the request goes
            assert "no longer in valid state" in str(e)
        assert ended.wait(30)
    finally:
        wrong.stop_stream()
    assert "UNAUTHENTICATED" in str(refused[0].status())  # type: ignore[attr-defined]
