"""Tensor-family builds beyond MiniLM: a sequence classifier exported with its logits, TVM targets this
TVM cannot compile for, and hostile ONNX sources."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ffserve"))
from tensor_models import ff_build, prepare_home

from registry.artifact import open_variant, variants_of
from registry.store import Store


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory, minilm_folder: Path) -> Path:
    """A small random BERT sequence classifier (2 layers, 32 wide) with MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("classifier")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        id2label={0: "negative", 1: "positive", 2: "neutral"},
        label2id={"negative": 0, "positive": 1, "neutral": 2},
    )
    BertForSequenceClassification(config).eval().save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(minilm_folder / name, folder / name)
    return folder


def test_a_sequence_classifier_exports_with_its_logits(classifier: Path, tmp_path: Path) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import BertForSequenceClassification

    home = prepare_home(tmp_path / "home")
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {classifier}\nQUANTIZE fp32\nTARGET cpu BACKEND onnxruntime\n")
    ff_build(home, mf, "clf:latest")
    store = Store(home / "store")
    (ref,) = variants_of(store, "clf:latest")
    assert ref.task == "classify" and ref.name == "fp32-cpu"
    files = open_variant(store, ref.descriptor.digest)
    assert float(files.annotations["io.ferrousforge.verify.cosine"]) >= 0.999
    spec = json.loads(files.files["graph.json"].read_text())
    assert spec["task"] == "classify" and spec["labels"] == ["negative", "positive", "neutral"]

    from ffruntime import load
    from ffruntime.runtime import CancelFlag, Capability
    from ffruntime.settings import LoadSettings
    from ffruntime.tensors import from_array, to_array

    texts = ["a fine day", "this is not good at all, really"]

    async def run() -> np.ndarray:
        rt = await load(ref, files, LoadSettings(threads=1))
        try:
            assert Capability.EMBED not in rt.capabilities and Capability.TENSOR in rt.capabilities
            out = await rt.infer(
                {"text": from_array(np.array([t.encode() for t in texts], dtype=object))}, CancelFlag()
            )  # type: ignore[attr-defined]
            return to_array(out["logits"])
        finally:
            await rt.close()

    logits = asyncio.run(run())
    tok = Tokenizer.from_file(str(classifier / "tokenizer.json"))
    model = BertForSequenceClassification.from_pretrained(classifier).eval()
    with torch.no_grad():
        for text, row in zip(texts, logits, strict=True):
            ids = torch.tensor([tok.encode(text).ids])
            np.testing.assert_allclose(row, model(input_ids=ids).logits[0].numpy(), atol=1e-4)


def test_tvm_names_the_code_generator_it_lacks(minilm_folder: Path, tmp_path: Path) -> None:
    import tvm

    if tvm.get_global_func("target.build.vulkan", allow_missing=True) is not None:
        pytest.skip("this TVM has a Vulkan code generator")
    home = prepare_home(tmp_path / "home")
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {minilm_folder}\nTARGET vulkan BACKEND tvm\nTASK embed\n")
    proc = ff_build(home, mf, "vk:latest", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "without the vulkan code generator" in proc.stderr and "USE_VULKAN=ON" in proc.stderr


def test_onnx_sources_that_cannot_be_served_are_refused(tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home")
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf at all")
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM model.onnx\n")
    proc = ff_build(home, mf, "bad:latest", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "onnxruntime cannot load it" in proc.stderr
    mf.write_text("FROM model.onnx\nTASK embed\n")
    proc = ff_build(home, mf, "bad:latest", check=False)
    assert proc.returncode != 0 and "TASK tensor" in proc.stderr


def test_fp16_graph_keeps_its_interface_and_verifies(minilm_folder: Path, tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home")
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {minilm_folder}\nQUANTIZE fp16\nTARGET cpu BACKEND onnxruntime\nTASK embed\n")
    ff_build(home, mf, "half:latest")
    store = Store(home / "store")
    (ref,) = variants_of(store, "half:latest")
    files = open_variant(store, ref.descriptor.digest)
    assert ref.name == "fp16-cpu" and files.annotations["io.ferrousforge.precision"] == "fp16"
    assert float(files.annotations["io.ferrousforge.verify.cosine"]) >= 0.99
    spec = json.loads(files.files["graph.json"].read_text())
    assert [o["datatype"] for o in spec["outputs"]] == ["FP32"]  # inputs and outputs keep their types
    import onnx

    model = onnx.load(str(files.files["model.onnx"]))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def test_tvm_refuses_a_cpu_llvm_does_not_know(minilm_folder: Path, tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home")
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {minilm_folder}\nTARGET cpu BACKEND tvm mcpu=pentium-9000 seq_len=x\nTASK embed\n")
    proc = ff_build(home, mf, "tvm:latest", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "mcpu=pentium-9000: LLVM does not know this CPU" in proc.stderr
