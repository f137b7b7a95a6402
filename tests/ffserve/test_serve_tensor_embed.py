"""all-MiniLM-L6-v2 built by ``modelfiles/minilm-all`` (GGUF f16, ONNX fp32/int8, TVM fp32 in one tag)
and served by a real ``ff serve``: the unmodified tritonclient[http], openai and ollama clients get
embeddings that match sentence-transformers within each precision's threshold, and tritonclient[grpc]
gets the very embeddings REST gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import ollama
import openai
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as triton
from tensor_models import build_minilm_all, ff_build, prepare_home

from tests.ffserve.serve_testkit import ROOT, Server, start_server

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome and everyone should see it.",
    "Stocks fell sharply after the announcement.",
]
THRESHOLD = {"fp32": 0.999, "int8": 0.98}
VARIANTS = {"fp32-cpu": "fp32", "int8-cpu": "int8", "fp32-cpu-tvm": "fp32"}


@pytest.fixture(scope="module")
def minilm_home(tmp_path_factory: pytest.TempPathFactory, minilm_folder: Path) -> Path:
    home = prepare_home(tmp_path_factory.mktemp("minilmhome"))
    build_minilm_all(home, minilm_folder)
    return home


@pytest.fixture(scope="module")
def reference(minilm_folder: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    out: np.ndarray = SentenceTransformer(str(minilm_folder), device="cpu").encode(SENTENCES)
    return out


@pytest.fixture(scope="module")
def minilm_server(minilm_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with start_server(minilm_home, tmp_path_factory.mktemp("minilmlogs"), grpc=True, FF_QUANTIZE="") as s:
        yield s


def _ff(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FF_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "ffcli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _cosines(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    got = np.asarray(got, dtype=np.float64)
    return (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))


def test_ff_show_lists_every_variant_with_its_figures(minilm_home: Path) -> None:
    proc = _ff(minilm_home, "show", "minilm-all", "--json")
    assert proc.returncode == 0, proc.stderr
    variants = {v["variant"]: v for v in json.loads(proc.stdout)["variants"]}
    assert set(variants) == {"f16-cpu", *VARIANTS}
    assert variants["f16-cpu"]["backend"] == "llamacpp" and variants["f16-cpu"]["agreement"] >= 0.99
    for name, quant in VARIANTS.items():
        v = variants[name]
        assert v["cosine"] >= THRESHOLD[quant], v
        assert v["verify"]["reference"] == "pytorch" and v["verify"]["inputs"] == 6
    assert variants["fp32-cpu-tvm"]["format"] == "tvm" and variants["int8-cpu"]["format"] == "onnx"
    table = _ff(minilm_home, "show", "minilm-all").stdout
    assert "COSINE" in table and "fp32-cpu-tvm" in table


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tritonclient_embeddings_match_sentence_transformers(
    minilm_server: Server, reference: np.ndarray, variant: str
) -> None:
    c = triton.InferenceServerClient(minilm_server.url.removeprefix("http://"))
    name = f"minilm-all:latest-{variant}"
    meta = c.get_model_metadata(name)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    assert meta["platform"] == ("tvm" if variant.endswith("tvm") else "onnxruntime_onnx")
    assert c.is_model_ready(name)
    inp = triton.InferInput("text", [len(SENTENCES)], "BYTES")
    inp.set_data_from_numpy(np.array([s.encode() for s in SENTENCES], dtype=object), binary_data=True)
    r = c.infer(name, [inp], outputs=[triton.InferRequestedOutput("embedding", binary_data=True)])
    got = r.as_numpy("embedding")
    assert got is not None and got.shape == (len(SENTENCES), 384)
    assert _cosines(got, reference).min() >= THRESHOLD[VARIANTS[variant]]


@pytest.mark.parametrize("variant", ["fp32-cpu", "int8-cpu"])
def test_grpc_embeddings_equal_rest(minilm_server: Server, variant: str) -> None:
    assert minilm_server.grpc is not None
    name = f"minilm-all:latest-{variant}"
    texts = np.array([s.encode() for s in SENTENCES], dtype=object)
    g = tgrpc.InferenceServerClient(minilm_server.grpc)
    meta = g.get_model_metadata(name, as_json=True)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]
    gin = tgrpc.InferInput("text", [len(SENTENCES)], "BYTES")
    gin.set_data_from_numpy(texts)
    got = g.infer(name, [gin]).as_numpy("embedding")
    rest = triton.InferenceServerClient(minilm_server.url.removeprefix("http://"))
    rin = triton.InferInput("text", [len(SENTENCES)], "BYTES")
    rin.set_data_from_numpy(texts, binary_data=True)
    want = rest.infer(name, [rin], outputs=[triton.InferRequestedOutput("embedding", binary_data=True)])
    assert got is not None and got.shape == (len(SENTENCES), 384)
    assert np.array_equal(got, want.as_numpy("embedding"))


def test_openai_and_ollama_embeddings(minilm_server: Server, reference: np.ndarray) -> None:
    ai = openai.OpenAI(base_url=minilm_server.url + "/v1", api_key="x", max_retries=0)
    for variant, quant in VARIANTS.items():
        r = ai.embeddings.create(model=f"minilm-all:latest-{variant}", input=SENTENCES)
        got = np.array([d.embedding for d in r.data])
        assert _cosines(got, reference).min() >= THRESHOLD[quant], variant
        assert r.usage.prompt_tokens > len(SENTENCES) * 3
    # the tag itself: the best variant for this machine (ONNX fp32 beats TVM fp32 and GGUF f16)
    oc = ollama.Client(host=minilm_server.url)
    vecs = np.array(oc.embed(model="minilm-all", input=SENTENCES).embeddings)
    assert _cosines(vecs, reference).min() >= 0.999
    one = oc.embeddings(model="minilm-all", prompt=SENTENCES[0]).embedding
    assert _cosines(np.array([one]), reference[:1]).min() >= 0.999
    loaded = {m.model for m in oc.ps().models}
    assert "minilm-all:latest-fp32-cpu" in loaded  # the tag and the variant tag share one loaded model


def test_backend_and_quantize_narrow_the_choice(minilm_home: Path, tmp_path: Path) -> None:
    with start_server(minilm_home, tmp_path, FF_QUANTIZE="", FF_BACKEND="tvm") as s:
        c = triton.InferenceServerClient(s.url.removeprefix("http://"))
        assert c.get_model_metadata("minilm-all")["platform"] == "tvm"
    with start_server(minilm_home, tmp_path, FF_QUANTIZE="int8", FF_BACKEND="onnxruntime") as s:
        c = triton.InferenceServerClient(s.url.removeprefix("http://"))
        assert c.get_model_metadata("minilm-all")["platform"] == "onnxruntime_onnx"
        assert "(int8-cpu)" in s.logs()  # the scheduler logs the variant it loaded


def test_tensorrt_fails_cleanly_without_tensorrt(minilm_home: Path, minilm_folder: Path) -> None:
    proc = ff_build(
        minilm_home,
        ROOT / "modelfiles" / "minilm-tensorrt",
        "minilm-trt:latest",
        "--build-arg",
        f"SOURCE={minilm_folder}",
        check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "fp16-cuda-tensorrt" in proc.stderr
    assert "TensorRT is not installed" in proc.stderr or "needs an NVIDIA GPU" in proc.stderr
    assert "tensorrt" in proc.stderr.lower() and "install" in proc.stderr
    assert _ff(minilm_home, "show", "minilm-trt").returncode != 0  # nothing was stored


def test_verify_min_cosine_fails_the_build(minilm_home: Path, minilm_folder: Path, tmp_path: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text(
        f"FROM {minilm_folder}\nQUANTIZE int8\nTARGET cpu BACKEND onnxruntime\nTASK embed\n"
        "VERIFY min_cosine=0.9999\n"
    )
    proc = ff_build(minilm_home, mf, "strict:latest", check=False)
    assert proc.returncode != 0
    assert "int8-cpu: cosine" in proc.stderr and "below min_cosine 0.9999" in proc.stderr
