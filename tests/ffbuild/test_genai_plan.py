"""Planning ONNX Runtime GenAI variants: int4, and QUANTIZE types paired with the TARGET whose backend
takes their family (a GGUF type to llamacpp, an ONNX type to onnxruntime) instead of a cross product."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffbuild.errors import ModelfileError
from ffbuild.modelfile import parse
from ffbuild.planner import make_plan


def plan(tmp_path: Path, body: str) -> list[tuple[str, str]]:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    p = make_plan(parse(f"FROM ./model\n{body}"), context=tmp_path)
    return sorted((v.name, v.backend) for v in p.variants)


def test_q4_0_and_int4_pair_with_their_backends(tmp_path: Path) -> None:
    body = "QUANTIZE q4_0 int4\nTARGET cpu BACKEND llamacpp\nTARGET cpu BACKEND onnxruntime\nTASK chat\n"
    assert plan(tmp_path, body) == [("int4-cpu", "onnxruntime"), ("q4_0-cpu", "llamacpp")]


def test_no_backend_picks_by_family(tmp_path: Path) -> None:
    got = plan(tmp_path, "QUANTIZE q4_0 int4\nTASK chat\n")
    assert got == [("int4-cpu", "onnxruntime"), ("q4_0-cpu", "llamacpp")]


def test_cuda_genai_target(tmp_path: Path) -> None:
    body = "QUANTIZE int4 fp16\nTARGET cuda BACKEND onnxruntime\nTASK chat\n"
    assert plan(tmp_path, body) == [("fp16-cuda", "onnxruntime"), ("int4-cuda", "onnxruntime")]


@pytest.mark.parametrize(
    ("task", "families"),
    [
        # an inferred task (no chat template in the folder: generate) sets the family like a written one
        ("", {"fp32-cpu": "genai", "q8_0-cpu": "gguf", "fp32-cpu-tvm": "tensor"}),
        ("TASK chat\n", {"fp32-cpu": "genai", "q8_0-cpu": "gguf", "fp32-cpu-tvm": "tensor"}),
        ("TASK embed\n", {"fp32-cpu": "tensor", "q8_0-cpu": "gguf", "fp32-cpu-tvm": "tensor"}),
    ],
)
def test_the_planner_sets_each_variants_family(tmp_path: Path, task: str, families: dict[str, str]) -> None:
    """gguf for llamacpp, genai for a chat/generate model on onnxruntime, tensor for the rest."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    body = "QUANTIZE q8_0 fp32\nTARGET cpu BACKEND llamacpp\nTARGET cpu BACKEND onnxruntime\n"
    body += "TARGET cpu BACKEND tvm\n" + task
    p = make_plan(parse(f"FROM ./model\n{body}"), context=tmp_path)
    assert {v.name: v.family for v in p.variants} == families


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # a type no TARGET takes is still an error
        ("QUANTIZE int4\nTARGET cpu BACKEND llamacpp\nTASK chat\n", "llamacpp cannot run int4"),
        # a TARGET that takes no type is still an error
        (
            "QUANTIZE q4_0\nTARGET cpu BACKEND llamacpp\nTARGET cpu BACKEND onnxruntime\nTASK chat\n",
            "onnxruntime cannot run q4_0",
        ),
        # a type of the right family that the backend lacks is not skipped
        (
            "QUANTIZE q4_0 int4\nTARGET cpu BACKEND llamacpp\nTARGET cuda BACKEND tensorrt\nTASK chat\n",
            "tensorrt cannot run int4",
        ),
        ("QUANTIZE int4\nTARGET cpu BACKEND onnxruntime\nTASK embed\n", "int4 is for chat/generate models"),
    ],
)
def test_refusals(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ModelfileError) as info:
        plan(tmp_path, body)
    text = "\n".join(str(e) for e in (info.value, *info.value.more))
    assert message in text
