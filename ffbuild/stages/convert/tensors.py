"""Hugging Face tensors → GGUF tensors: names, the type each is stored in, and the data, chunk by chunk.

:func:`plan_tensors` decides everything from the headers alone (no weight is read), so the GGUF header
can be written first and the data streamed after it. :func:`tensor_chunks` then reads one tensor at a
time from the memory-mapped shards and yields it converted in slices of bounded size: peak memory
is one tensor's rows, never the model.

Type rule (as llama.cpp's converter): 1-D tensors, norms, biases, position and token-type embeddings
stay f32; the other weights take the requested type (f32, f16 or bf16).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gguf
import numpy as np
import numpy.typing as npt

from ffbuild.stages.convert.architectures import Architecture, HFConfig, llama3_rope_factors, permute_qk
from ffbuild.stages.convert.safetensors_reader import BF16, SafetensorsFolder
from ffbuild.stages.errors import ConvertError

OUT_TYPES: dict[str, gguf.GGMLQuantizationType] = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
}
_ALWAYS_F32 = {
    gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD] + ".weight",
    gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_TYPES] + ".weight",
}
_FLOAT_SOURCES = ("F64", "F32", "F16", BF16)
CHUNK_ELEMENTS = 1 << 24  # rows are converted in slices of about this many elements

Array = npt.NDArray[np.generic]


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order (rows first)
    out_type: gguf.GGMLQuantizationType
    source: str | None  # Hugging Face name, or None for a generated tensor
    source_dtype: str
    transform: Callable[[Array], Array] | None = None
    generated: Array | None = None

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.n_elements * (4 if self.out_type == gguf.GGMLQuantizationType.F32 else 2)


def _block_id(name: str) -> int | None:
    return next((int(p) for p in name.split(".") if p.isdecimal()), None)


def _out_type(gguf_name: str, n_dims: int, outtype: str) -> gguf.GGMLQuantizationType:
    if n_dims <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    if gguf_name in _ALWAYS_F32:
        return gguf.GGMLQuantizationType.F32
    return OUT_TYPES[outtype]


def plan_tensors(
    arch: Architecture, cfg: HFConfig, st: SafetensorsFolder, outtype: str
) -> list[PlannedTensor]:
    n_blocks = cfg.int("num_hidden_layers")
    name_map = gguf.get_tensor_name_map(arch.gguf_arch, n_blocks)
    n_head = cfg.int("num_attention_heads")
    n_kv = cfg.int("num_key_value_heads", default=n_head)
    planned: dict[str, PlannedTensor] = {}
    for hf_name, ref in st.tensors.items():
        name = hf_name
        for prefix in arch.strip_prefixes:
            name = name.removeprefix(prefix)
        if name in arch.drop_exact or name.endswith(arch.drop) or name.startswith("cls."):
            continue
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConvertError(f"{ref.shard}: tensor {hf_name!r} has no place in a GGUF {arch.name} model")
        if ref.dtype not in _FLOAT_SOURCES:
            raise ConvertError(f"{ref.shard}: tensor {hf_name!r} is {ref.dtype}; only float weights convert "
                               "(quantized checkpoints are not supported)")
        transform: Callable[[Array], Array] | None = None
        if arch.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            transform = lambda a, h=n_head: permute_qk(a, h)  # noqa: E731
        elif arch.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            transform = lambda a, h=n_kv: permute_qk(a, h)  # noqa: E731
        if gguf_name in planned:
            raise ConvertError(f"two tensors map to {gguf_name}: {planned[gguf_name].source} and {hf_name}")
        out = _out_type(gguf_name, len(ref.shape), outtype)
        planned[gguf_name] = PlannedTensor(gguf_name, ref.shape, out, hf_name, ref.dtype, transform)
    factors = llama3_rope_factors(cfg)
    if factors is not None:
        rope_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        planned[rope_name] = PlannedTensor(
            rope_name, factors.shape, gguf.GGMLQuantizationType.F32, None, "F32", generated=factors
        )
    embd = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"
    if embd not in planned:
        raise ConvertError(f"{st.folder}: no token embedding tensor; is this a complete model?")
    # Non-block tensors first, then blocks in order: a stable order independent of how shards split.
    return sorted(planned.values(), key=lambda t: (_block_id(t.name) or -1, t.name))


def _to_f32(a: Array, dtype: str) -> npt.NDArray[np.float32]:
    if dtype == BF16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32, copy=False)


def _f32_to_bf16(a: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """Round to nearest even, as torch and ggml do; NaNs stay NaN."""
    bits = a.view(np.uint32)
    bits = np.where(np.isnan(a), (bits & np.uint32(0xFFFF0000)) | np.uint32(0x00400000), bits)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16
    return rounded.astype(np.uint16)


def _convert(a: Array, src: str, out: gguf.GGMLQuantizationType) -> Array:
    if out == gguf.GGMLQuantizationType.BF16:
        return a if src == BF16 else _f32_to_bf16(_to_f32(a, src))
    if out == gguf.GGMLQuantizationType.F16:
        return a if src == "F16" else _to_f32(a, src).astype(np.float16)
    return _to_f32(a, src)


def tensor_chunks(t: PlannedTensor, st: SafetensorsFolder) -> Iterator[bytes | Array]:
    """The tensor's data in its GGUF type, as contiguous arrays of at most ~CHUNK_ELEMENTS elements."""
    if t.generated is not None:
        yield np.ascontiguousarray(t.generated)
        return
    assert t.source is not None
    data = st.load(t.source)
    if t.transform is not None:
        data = t.transform(data)
    if data.ndim == 0 or data.size <= CHUNK_ELEMENTS:
        yield np.ascontiguousarray(_convert(data, t.source_dtype, t.out_type))
        return
    row = max(1, data.size // data.shape[0])
    step = max(1, CHUNK_ELEMENTS // row)
    for start in range(0, data.shape[0], step):
        yield np.ascontiguousarray(_convert(data[start : start + step], t.source_dtype, t.out_type))
