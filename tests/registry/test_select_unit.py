from __future__ import annotations

import pytest

from registry.artifact import VariantRef
from registry.oci import ANN_BACKEND, ANN_QUANTIZATION, ANN_TARGET, ANN_VARIANT, OCI_MANIFEST, Descriptor
from registry.select import HostInfo, SelectionError, select_variant


def _v(quant: str, target: str, backend: str = "llamacpp") -> VariantRef:
    name = f"{quant}-{target.replace(':', '-')}"
    ann = {ANN_VARIANT: name, ANN_TARGET: target, ANN_BACKEND: backend, ANN_QUANTIZATION: quant}
    return VariantRef(
        Descriptor(
            media_type=OCI_MANIFEST,
            digest="sha256:" + f"{abs(hash(name)):064d}"[-64:],
            size=1,
            annotations=ann,
        )
    )


CPU = HostInfo(frozenset({"cpu"}), frozenset(), frozenset({"llamacpp", "onnxruntime"}))
H100 = HostInfo(
    frozenset({"cpu", "cuda"}), frozenset({"sm_90"}), frozenset({"llamacpp", "onnxruntime", "tensorrt"})
)
MODEL = [
    _v("q8_0", "cpu"),
    _v("f16", "cuda:sm_90"),
    _v("int8", "cpu", "onnxruntime"),
    _v("fp16", "cuda:sm_80", "tensorrt"),
]


@pytest.mark.parametrize(
    ("kwargs", "host", "expected"),
    [
        ({"quantize": "q8_0"}, CPU, "q8_0-cpu"),
        ({"target": "cpu", "quantize": "int8"}, CPU, "int8-cpu"),
        ({}, H100, "f16-cuda-sm_90"),  # the GPU beats the CPU; sm_80 engine does not fit sm_90
        ({"variant": "fp16-cuda-sm_80"}, CPU, "fp16-cuda-sm_80"),  # named explicitly: no fit check
        ({"target": "cuda"}, H100, "f16-cuda-sm_90"),
        ({}, CPU, "q8_0-cpu"),  # q8_0 (8.5 bits) outranks int8 (8 bits) on the CPU
        ({"backend": "onnxruntime"}, CPU, "int8-cpu"),
    ],
)
def test_select(kwargs: dict[str, str], host: HostInfo, expected: str) -> None:
    assert select_variant(MODEL, host=host, **kwargs).name == expected


@pytest.mark.parametrize(
    ("kwargs", "host", "message"),
    [
        ({"target": "cpu", "backend": "tensorrt"}, CPU, "no variant matches"),
        ({"quantize": "q2_k"}, CPU, "no variant matches"),
        ({"target": "cuda"}, CPU, "no variant fits this machine"),
    ],
)
def test_select_errors_list_candidates(kwargs: dict[str, str], host: HostInfo, message: str) -> None:
    with pytest.raises(SelectionError, match=message) as info:
        select_variant(MODEL, host=host, **kwargs)
    assert "q8_0-cpu" in str(info.value) or "f16-cuda-sm_90" in str(info.value)


def test_rank_prefers_precision_then_backend() -> None:
    gguf = [_v("f16", "cpu"), _v("q8_0", "cpu"), _v("q4_k_m", "cpu")]
    assert select_variant(gguf, host=CPU).name == "f16-cpu"
    assert select_variant([*gguf[1:], _v("fp32", "cpu", "onnxruntime")], host=CPU).name == "fp32-cpu"
    same = [_v("fp32", "cpu", "onnxruntime"), _v("fp32", "cpu:avx2", "tvm")]
    host = HostInfo(frozenset({"cpu"}), frozenset(), frozenset({"onnxruntime", "tvm"}), frozenset({"avx2"}))
    assert select_variant(same, host=host).backend == "onnxruntime"


def test_a_tie_at_the_top_is_an_error() -> None:
    tie = [_v("q8_0", "cpu"), _v("q8_0", "cpu:avx2")]
    host = HostInfo(frozenset({"cpu"}), frozenset(), frozenset({"llamacpp"}), frozenset({"avx2"}))
    with pytest.raises(SelectionError, match="several variants fit equally well"):
        select_variant(tie, host=host)
