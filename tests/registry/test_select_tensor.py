"""Selection among one tag's GGUF, ONNX fp32/int8 and TVM variants (what minilm-all holds), and the
``backend`` narrowing that ``ff pull --backend`` and ``ff serve --backend`` pass down."""

from __future__ import annotations

import pytest

from registry.artifact import VariantRef
from registry.oci import (
    ANN_BACKEND,
    ANN_QUANTIZATION,
    ANN_TARGET,
    ANN_VARIANT,
    OCI_MANIFEST,
    Descriptor,
    Index,
)
from registry.remote import _choose
from registry.select import HostInfo, SelectionError, select_variant

TAG = [
    ("f16-cpu", "f16", "llamacpp"),
    ("fp32-cpu", "fp32", "onnxruntime"),
    ("int8-cpu", "int8", "onnxruntime"),
    ("fp32-cpu-tvm", "fp32", "tvm"),
]


def _desc(name: str, quant: str, backend: str) -> Descriptor:
    ann = {ANN_VARIANT: name, ANN_TARGET: "cpu", ANN_BACKEND: backend, ANN_QUANTIZATION: quant}
    return Descriptor(
        media_type=OCI_MANIFEST,
        digest="sha256:" + name.encode().hex().ljust(64, "0")[:64],
        size=1,
        annotations=ann,
    )


def _host(*backends: str) -> HostInfo:
    return HostInfo(frozenset({"cpu"}), frozenset(), frozenset(backends))


@pytest.mark.parametrize(
    ("backends", "kwargs", "expected"),
    [
        (("llamacpp", "onnxruntime", "tvm"), {}, "fp32-cpu"),  # fp32 beats f16; onnxruntime beats tvm
        (("llamacpp", "tvm"), {}, "fp32-cpu-tvm"),  # onnxruntime not installed
        (("llamacpp",), {}, "f16-cpu"),
        (("llamacpp", "onnxruntime", "tvm"), {"backend": "tvm"}, "fp32-cpu-tvm"),
        (("llamacpp", "onnxruntime", "tvm"), {"backend": "llamacpp"}, "f16-cpu"),
        (("llamacpp", "onnxruntime", "tvm"), {"quantize": "int8"}, "int8-cpu"),
        (("llamacpp", "onnxruntime", "tvm"), {"quantize": "fp32", "backend": "onnxruntime"}, "fp32-cpu"),
    ],
)
def test_one_tag_many_runtimes(backends: tuple[str, ...], kwargs: dict[str, str], expected: str) -> None:
    refs = [VariantRef(_desc(*t)) for t in TAG]
    assert select_variant(refs, host=_host(*backends), **kwargs).name == expected
    index = Index(schema_version=2, manifests=[_desc(*t) for t in TAG])
    chosen = _choose(
        index,
        target=None,
        quantize=kwargs.get("quantize"),
        variant=None,
        all_variants=False,
        host=_host(*backends),
        backend=kwargs.get("backend"),
    )
    assert [v.name for v in chosen] == [expected]


def test_a_backend_that_is_not_installed_is_an_error_listing_the_candidates() -> None:
    refs = [VariantRef(_desc(*t)) for t in TAG]
    with pytest.raises(SelectionError, match=r"(?s)no variant fits this machine.*fp32-cpu-tvm"):
        select_variant(refs, host=_host("llamacpp"), backend="tvm")
