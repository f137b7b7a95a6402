"""QUANTIZE × TARGET → variants: defaults, backends, command-line overrides and every rejection."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffbuild.errors import ModelfileError
from ffbuild.plan import BuildPlan
from ffbuild.planner import plan_file
from registry.choices import BACKENDS, QUANTIZATIONS, default_backend


@pytest.fixture
def folder(tmp_path: Path, smollm2_gguf: Path, minilm_folder: Path) -> Path:
    (tmp_path / "model.gguf").symlink_to(smollm2_gguf)
    (tmp_path / "hf").symlink_to(minilm_folder)
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    return tmp_path


SOURCES = {
    "gguf": "./model.gguf",
    "hf": "./hf",
    "onnx": "./model.onnx",
    "repo": "hf://org/repo",
    "oci": "llama3:8b",
}


def plan(folder: Path, source: str, body: str, **kw: object) -> BuildPlan:
    (folder / "Modelfile").write_text(f"FROM {SOURCES[source]}\nTASK generate\n{body}\n")
    return plan_file(folder / "Modelfile", **kw)  # type: ignore[arg-type]


def names(p: BuildPlan) -> list[tuple[str, str]]:
    return [(v.name, v.backend) for v in p.variants]


# (source, body, expected (variant name, backend) pairs)
EXPANSIONS: list[tuple[str, str, list[tuple[str, str]]]] = [
    # no QUANTIZE, no TARGET: cpu, with the backend and precision the source suggests
    ("gguf", "", [("source-cpu", "llamacpp")]),
    ("hf", "", [("f16-cpu", "llamacpp")]),
    ("repo", "", [("f16-cpu", "llamacpp")]),
    ("oci", "", [("source-cpu", "llamacpp")]),
    ("onnx", "", [("fp32-cpu", "onnxruntime")]),
    # QUANTIZE: one variant per type, the family picks the backend
    (
        "hf",
        "QUANTIZE f16 q8_0 q4_k_m",
        [("f16-cpu", "llamacpp"), ("q8_0-cpu", "llamacpp"), ("q4_k_m-cpu", "llamacpp")],
    ),
    (
        "hf",
        "QUANTIZE Q8_0\nQUANTIZE fp32 INT8",
        [("q8_0-cpu", "llamacpp"), ("fp32-cpu", "onnxruntime"), ("int8-cpu", "onnxruntime")],
    ),
    ("onnx", "QUANTIZE fp16 int8", [("fp16-cpu", "onnxruntime"), ("int8-cpu", "onnxruntime")]),
    ("gguf", "QUANTIZE q8_0 requantize=true", [("q8_0-cpu", "llamacpp")]),
    # TARGET: × every type; detail in the name; default backends per device
    (
        "hf",
        "QUANTIZE q8_0 fp16\nTARGET cpu\nTARGET cuda:sm_90",
        [
            ("q8_0-cpu", "llamacpp"),
            ("fp16-cpu", "onnxruntime"),
            ("q8_0-cuda-sm_90", "llamacpp"),
            ("fp16-cuda-sm_90", "onnxruntime"),
        ],
    ),
    (
        "hf",
        "QUANTIZE fp16\nTARGET metal\nTARGET vulkan\nTARGET rocm:gfx90a",
        [
            ("fp16-metal", "tvm"),
            ("fp16-vulkan", "tvm"),
            ("fp16-rocm-gfx90a", "onnxruntime"),
        ],
    ),
    ("hf", "TARGET cuda BACKEND tensorrt", [("fp32-cuda-tensorrt", "tensorrt")]),
    (
        "hf",
        "TARGET cpu BACKEND tvm\nTARGET cuda backend OnnxRuntime",
        [("fp32-cpu-tvm", "tvm"), ("fp32-cuda", "onnxruntime")],
    ),
    (
        "hf",
        "QUANTIZE int8 fp16\nTARGET cuda:sm_89 BACKEND tensorrt",
        [("int8-cuda-sm_89-tensorrt", "tensorrt"), ("fp16-cuda-sm_89-tensorrt", "tensorrt")],
    ),
    (
        "gguf",
        "TARGET cpu:amd64\nTARGET cpu:aarch64\nTARGET metal",
        [
            ("source-cpu-x86_64", "llamacpp"),
            ("source-cpu-arm64", "llamacpp"),
            ("source-metal", "llamacpp"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("source", "body", "expected"), EXPANSIONS, ids=[f"{s}:{b[:40]}" for s, b, _ in EXPANSIONS]
)
def test_expansion(folder: Path, source: str, body: str, expected: list[tuple[str, str]]) -> None:
    assert names(plan(folder, source, body)) == expected


def test_target_options_and_variant_fields(folder: Path) -> None:
    p = plan(
        folder, "hf", "QUANTIZE fp16\nTARGET cuda:sm_90 BACKEND tensorrt workspace=4G opt.level=3 empty="
    )
    (v,) = p.variants
    assert (v.quantization, v.device, v.device_detail, v.backend, v.target, v.name) == (
        "fp16",
        "cuda",
        "sm_90",
        "tensorrt",
        "cuda:sm_90",
        "fp16-cuda-sm_90-tensorrt",
    )
    assert v.options == {"workspace": "4G", "opt.level": "3", "empty": ""}


def test_requantize_flag_and_warning(folder: Path) -> None:
    p = plan(folder, "gguf", "QUANTIZE q8_0")
    assert not p.requantize
    assert any("already quantized (q4_1)" in w and "requantize=true" in w for w in p.warnings)
    p = plan(folder, "gguf", "QUANTIZE q8_0 requantize=TRUE")
    assert p.requantize and not p.warnings
    assert not plan(folder, "gguf", "").warnings  # keeping the source's precision is no requantization
    assert not plan(folder, "gguf", "QUANTIZE q4_1").warnings  # nor is asking for what it is


def test_command_line_overrides(folder: Path) -> None:
    body = "QUANTIZE q8_0\nTARGET cpu"
    p = plan(folder, "hf", body, quantize=["q4_k_m", "f16"], targets=["cuda:sm_90", "cpu BACKEND llamacpp"])
    assert names(p) == [
        ("q4_k_m-cuda-sm_90", "llamacpp"),
        ("f16-cuda-sm_90", "llamacpp"),
        ("q4_k_m-cpu", "llamacpp"),
        ("f16-cpu", "llamacpp"),
    ]
    assert plan(folder, "gguf", "QUANTIZE q8_0", quantize=["q8_0", "requantize=true"]).requantize


# (source, body, message, (line, column) or None for errors from the command line)
REJECTIONS: list[tuple[str, str, str, tuple[int, int] | None]] = [
    ("hf", "TARGET cpu BACKEND tensorrt", "the tensorrt backend does not run on cpu", (3, 20)),
    ("hf", "QUANTIZE q4_k_m\nTARGET cpu BACKEND onnxruntime", "onnxruntime cannot run q4_k_m", (3, 10)),
    ("hf", "QUANTIZE int8\nTARGET cpu BACKEND llamacpp", "llamacpp cannot run int8", (3, 10)),
    ("hf", "QUANTIZE fp32 int8\nTARGET cpu BACKEND tvm", "tvm cannot run int8", (3, 15)),
    ("hf", "QUANTIZE q2_k_s", "q2_k_s needs an importance matrix", (3, 10)),
    ("hf", "QUANTIZE IQ1_S", "iq1_s needs an importance matrix", (3, 10)),
    ("hf", "QUANTIZE q4_k_n", 'unknown quantization "q4_k_n"', (3, 10)),
    ("hf", "QUANTIZE q8_0 q8_0", "q8_0 is listed twice", (3, 15)),
    ("hf", "QUANTIZE q8_0\nQUANTIZE Q8_0", "q8_0 is already listed by an earlier QUANTIZE", (4, 10)),
    ("hf", "QUANTIZE q8_0 requantise=true", 'unknown QUANTIZE option "requantise"', (3, 15)),
    ("hf", "QUANTIZE q8_0 requantize=maybe", "requantize: 'maybe' is not a boolean", (3, 15)),
    ("hf", "QUANTIZE requantize=true", "QUANTIZE needs at least one type", (3, 10)),
    (
        "gguf",
        "QUANTIZE int8",
        "a GGUF source runs only on llamacpp, not onnxruntime (int8 is an ONNX-family type)",
        (3, 10),
    ),
    ("gguf", "TARGET cpu BACKEND tvm", "a GGUF source runs only on llamacpp, not tvm", (3, 20)),
    (
        "onnx",
        "QUANTIZE q8_0",
        "an ONNX source cannot be converted to GGUF for llamacpp (q8_0 is a GGUF type)",
        (3, 10),
    ),
    (
        "onnx",
        "TARGET cpu BACKEND llamacpp",
        "an ONNX source cannot be converted to GGUF for llamacpp",
        (3, 20),
    ),
    ("hf", "TARGET gpu", 'unknown device "gpu"', (3, 8)),
    ("hf", "TARGET cuda:ampere", 'unknown cuda detail "ampere"', (3, 8)),
    ("hf", "TARGET cuda:90", 'unknown cuda detail "90"', (3, 8)),
    ("hf", "TARGET rocm:mi300", 'unknown rocm detail "mi300"', (3, 8)),
    ("hf", "TARGET cpu:risc-v", 'unknown cpu detail "risc-v"', (3, 8)),
    ("hf", "TARGET metal:m3", "metal takes no detail after ':'", (3, 8)),
    ("hf", "TARGET cpu BACKEND llama.cpp", 'unknown backend "llama.cpp"', (3, 20)),
    ("hf", "TARGET cpu BACKEND", "BACKEND needs a name", (3, 12)),
    ("hf", "TARGET cpu BACKEND tvm BACKEND tvm", "BACKEND is given twice", (3, 24)),
    ("hf", "TARGET cpu backend=tvm", "write the backend as BACKEND <name>", (3, 12)),
    ("hf", "TARGET cpu fast", 'unexpected "fast" in TARGET', (3, 12)),
    ("hf", "TARGET cpu a=1 a=2", "option a is given twice", (3, 16)),
    ("hf", "TARGET cpu 1x=2", 'invalid option name "1x"', (3, 12)),
    (
        "hf",
        "QUANTIZE fp32\nTARGET cpu\nTARGET cpu BACKEND onnxruntime",
        "two variants would be named fp32-cpu (onnxruntime and onnxruntime)",
        (5, 8),
    ),
    ("hf", "", "--quantize: unknown quantization", None),
]


@pytest.mark.parametrize(
    ("source", "body", "message", "where"), REJECTIONS, ids=[f"{s}:{b[:40]}" for s, b, _, _ in REJECTIONS]
)
def test_rejections(
    folder: Path, source: str, body: str, message: str, where: tuple[int, int] | None
) -> None:
    kw = {"quantize": ["q9_9"]} if where is None else {}
    with pytest.raises(ModelfileError) as info:
        plan(folder, source, body, **kw)
    err = info.value
    assert message in err.message, str(err)
    assert len(err.errors) == 1, str(err)
    assert ((err.line, err.column) if err.line else None) == where, str(err)


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        ("QUANTIZE Q4_KM", "did you mean q4_k_m?"),
        ("TARGET cdua", "did you mean cuda?"),
        ("TARGET cpu BACKEND onnxrt", "did you mean onnxruntime?"),
        ("TARGET cpu BACKEND tensorrt", "tensorrt runs on: cuda"),
        ("QUANTIZE q4_k_m\nTARGET cpu BACKEND onnxruntime", "onnxruntime takes: fp32, fp16, int8, int4"),
        ("TARGET cuda:ampere", "cuda: takes sm_<compute capability>, e.g. cuda:sm_90"),
    ],
)
def test_rejection_hints(folder: Path, body: str, hint: str) -> None:
    with pytest.raises(ModelfileError) as info:
        plan(folder, "hf", body)
    assert info.value.hint == hint


def test_a_bad_command_line_target(folder: Path) -> None:
    with pytest.raises(ModelfileError) as info:
        plan(folder, "hf", "", targets=["cuda:sm_90 BACKEND tensorrt", "tpu"])
    assert info.value.message == "--target 'tpu': unknown device \"tpu\"" and info.value.line is None


def test_every_backend_and_type_in_the_tables_is_reachable(folder: Path) -> None:
    """Each (backend, device, type) the choices tables allow plans from a Hugging Face source (ctranslate2
    for TASK transcribe, the task it serves)."""
    for backend, spec in BACKENDS.items():
        task = "transcribe" if spec["format"] == "ctranslate2" else "generate"
        for device in spec["devices"]:
            for q in spec["quantizations"]:
                if QUANTIZATIONS[q]["needs_imatrix"]:
                    continue
                (folder / "Modelfile").write_text(
                    f"FROM {SOURCES['hf']}\nTASK {task}\nQUANTIZE {q}\nTARGET {device} BACKEND {backend}\n"
                )
                p = plan_file(folder / "Modelfile")
                family = {"gguf": "gguf", "ctranslate2": "speech"}.get(spec["format"], "onnx")
                suffix = "" if backend == default_backend(family, device) else f"-{backend}"
                assert names(p) == [(f"{q}-{device}{suffix}", backend)]


def test_each_type_goes_to_the_targets_that_run_it(folder: Path) -> None:
    """fp32+int8 for onnxruntime and tvm in one Modelfile: tvm gets fp32 only (it does not run int8)."""
    body = "QUANTIZE fp32 int8\nTARGET cpu BACKEND onnxruntime\nTARGET cpu BACKEND tvm"
    assert names(plan(folder, "hf", body)) == [
        ("fp32-cpu", "onnxruntime"),
        ("int8-cpu", "onnxruntime"),
        ("fp32-cpu-tvm", "tvm"),
    ]
    with pytest.raises(ModelfileError, match="tvm cannot run int8"):
        plan(folder, "hf", "QUANTIZE int8\nTARGET cpu BACKEND onnxruntime\nTARGET cpu BACKEND tvm")
