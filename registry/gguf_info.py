"""What a GGUF file is: its metadata and tensor table, read from the header without loading weights.

:func:`read_gguf_header` parses the header (key/values and tensor infos) with bounds checks, so a
hostile or truncated file gives a :class:`GGUFError`, never a crash or a huge allocation. Large
arrays (the vocabulary, merges) are skipped, not decoded: ``gguf.GGUFReader`` builds a numpy view per
element and takes ~3 s on SmolLM2's 49k-token vocabulary; this reader takes a few milliseconds.
The tests check it against ``gguf.GGUFReader`` field by field. It lives in ``registry`` because both
the build (every stage) and the store (Ollama-format pulls) read GGUF headers.

:func:`read_gguf_info` summarises a header as a :class:`GGUFInfo`: architecture, size, quantization
(a key of ``registry.choices.QUANTIZATIONS``) and precision, as the artifact's ModelPack config wants them.
"""

from __future__ import annotations

import functools
import mmap
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from pydantic import BaseModel, ConfigDict

from registry.choices import QUANTIZATIONS


class GGUFFormatError(ValueError):
    """A file is not a readable GGUF (the message names the file and what is wrong)."""


GGUFError = GGUFFormatError  # the name the reader raises below

GGUF_MAGIC = 0x46554747  # b"GGUF" little-endian
MAX_SMALL_ARRAY = 64  # arrays up to this length are decoded; longer ones are kept as (type, count)
_MAX_ITEMS = 1 << 24  # tensor / key-value / array counts above this are refused as hostile
_LLAMA_FTYPE_GUESSED = 1024
_SCALAR = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_FTYPE_TO_QUANT = {q["ftype"]: k for k, q in QUANTIZATIONS.items() if q["format"] == "gguf"}
# The quantization a file is when its file_type is missing: by its dominant tensor type.
_TENSOR_TYPE_TO_QUANT = {
    "Q2_K": "q2_k",
    "Q3_K": "q3_k_m",
    "Q4_K": "q4_k_m",
    "Q5_K": "q5_k_m",
    "Q6_K": "q6_k",
}
_FLOAT_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "F64": "f64"}

Scalar = int | float | bool | str


@dataclass(frozen=True)
class LongArray:
    """An array too long to decode (vocabulary, merges, scores): its element type and length."""

    type: GGUFValueType
    count: int


Value = Scalar | tuple[Scalar, ...] | LongArray


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # in ggml order (ne0 first: the row length)
    type: GGMLQuantizationType
    offset: int  # from the start of the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.type]
        return self.n_elements // block * size


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    kv: dict[str, Value]
    tensors: tuple[TensorEntry, ...]
    data_offset: int  # where tensor data starts in the file
    file_size: int


_U64 = struct.Struct("<Q")


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: not a valid GGUF file ({what} at byte {self.pos})")

    def unpack(self, fmt: str) -> Scalar:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise self.fail("truncated")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value  # type: ignore[no-any-return]

    def count(self, what: str) -> int:
        n = int(self.unpack("<Q"))
        if n > _MAX_ITEMS:
            raise self.fail(f"implausible {what} count {n}")
        return n

    def string(self) -> str:
        n = int(self.unpack("<Q"))
        if self.pos + n > len(self.buf):
            raise self.fail("truncated string")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail("string is not UTF-8") from e

    def value_type(self) -> GGUFValueType:
        raw = int(self.unpack("<I"))
        try:
            return GGUFValueType(raw)
        except ValueError as e:
            raise self.fail(f"unknown value type {raw}") from e

    def value(self, vtype: GGUFValueType) -> Value:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            etype = self.value_type()
            if etype == GGUFValueType.ARRAY:
                raise self.fail("nested arrays are not supported")
            n = self.count("array")
            if n > MAX_SMALL_ARRAY:
                self.skip_array(etype, n)
                return LongArray(etype, n)
            return tuple(self.value(etype) for _ in range(n))  # type: ignore[misc]
        fmt = _SCALAR.get(vtype)
        if fmt is None:
            raise self.fail(f"unexpected value type {vtype}")
        return self.unpack(fmt)

    def skip_array(self, etype: GGUFValueType, n: int) -> None:
        if etype == GGUFValueType.STRING:  # a vocabulary: ~100k strings, in one tight loop
            buf, pos, end, length = self.buf, self.pos, len(self.buf), _U64.unpack_from
            for _ in range(n):
                if pos + 8 > end:
                    self.pos = pos
                    raise self.fail("truncated")
                pos += 8 + length(buf, pos)[0]
                if pos > end:
                    self.pos = pos
                    raise self.fail("truncated string")
            self.pos = pos
            return
        size = struct.calcsize(_SCALAR[etype]) * n
        if self.pos + size > len(self.buf):
            raise self.fail("truncated array")
        self.pos += size


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parse ``path``'s GGUF header: key/values (long arrays skipped) and the tensor table."""
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            if size < 24:
                raise GGUFError(f"{path}: not a GGUF file (only {size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(_Cursor(buf, path), size)
    except OSError as e:
        raise GGUFError(f"cannot read {path}: {e.strerror or e}") from e


def _parse(cur: _Cursor, size: int) -> GGUFHeader:
    if cur.unpack("<I") != GGUF_MAGIC:
        raise GGUFError(f"{cur.path}: not a GGUF file (bad magic)")
    version = int(cur.unpack("<I"))
    if version not in (2, 3):
        raise GGUFError(
            f"{cur.path}: unsupported GGUF version {version} (big-endian files are not supported)"
        )
    n_tensors = cur.count("tensor")
    n_kv = cur.count("key/value")
    kv: dict[str, Value] = {}
    for _ in range(n_kv):
        key = cur.string()
        kv[key] = cur.value(cur.value_type())
    tensors: list[TensorEntry] = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = int(cur.unpack("<I"))
        if not 1 <= n_dims <= 4:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(int(cur.unpack("<Q")) for _ in range(n_dims))
        raw_type = int(cur.unpack("<I"))
        try:
            ttype = GGMLQuantizationType(raw_type)
        except ValueError as e:
            raise cur.fail(f"tensor {name!r} has unknown type {raw_type}") from e
        tensors.append(TensorEntry(name, shape, ttype, int(cur.unpack("<Q"))))
    align = kv.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise cur.fail(f"bad general.alignment {align!r}")
    data_offset = -(-cur.pos // align) * align
    header = GGUFHeader(version, kv, tuple(tensors), data_offset, size)
    for t in header.tensors:
        if data_offset + t.offset + t.n_bytes > size:
            raise GGUFError(f"{cur.path}: truncated GGUF file (tensor {t.name!r} ends past its end)")
    return header


class GGUFInfo(BaseModel):
    """A GGUF file in the terms of the artifact's config (ModelPack) and the build plan."""

    model_config = ConfigDict(frozen=True)
    architecture: str  # general.architecture: "llama", "qwen2", "bert", …
    name: str | None
    param_count: int  # elements over all tensors
    param_size: str  # "135M", "1.5B"
    file_type: int | None  # llama.cpp's LLAMA_FTYPE_* (general.file_type), without the "guessed" flag
    quantization: str  # a key of choices.QUANTIZATIONS when the file is one of them, else the ggml type name
    precision: str  # "f32", "f16", "bf16", or "int8", "int4", … for quantized files
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    chat_template: str | None
    is_adapter: bool  # general.type == "adapter" (a LoRA)
    adapter_type: str | None = None  # adapter.type, e.g. "lora"
    lora_alpha: float | None = None
    pooling_type: int | None = None  # {arch}.pooling_type for embedding models (1 mean, 2 cls, 3 last)
    tokenizer_model: str | None = None  # tokenizer.ggml.model: "gpt2", "llama", "bert", …
    tensor_count: int
    tensor_bytes: int  # the size of all tensor data
    tensor_types: dict[str, int]  # ggml type name → number of tensors


def size_label(n: int) -> str:
    """A parameter count as people write it: 22.7e6 → "23M", 134.5e6 → "135M", 1.54e9 → "1.5B"."""
    if n < 1000:
        return str(n)
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            value = n / div
            text = f"{value:.0f}" if value >= 10 or unit in ("K", "M") else f"{value:.1f}".removesuffix(".0")
            return text + unit
    raise AssertionError(n)


def quantization_precision(quantization: str) -> str:
    """``f16`` → ``f16``; ``q4_k_m`` → ``int4``; ``q8_0`` → ``int8``; ``tq1_0`` → ``ternary``."""
    if quantization in ("f32", "f16", "bf16", "f64"):
        return quantization
    if quantization.startswith("tq"):
        return "ternary"
    m = re.match(r"i?q(\d)", quantization)
    return f"int{m.group(1)}" if m else quantization


def _dominant_type(tensors: tuple[TensorEntry, ...]) -> str | None:
    """The type holding most weight elements among tensors of two or more dimensions."""
    weights: Counter[str] = Counter()
    for t in tensors:
        if len([d for d in t.shape if d > 1]) >= 2:
            weights[t.type.name] += t.n_elements
    return weights.most_common(1)[0][0] if weights else None


def _int(v: Value | None) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Value | None) -> str | None:
    return v if isinstance(v, str) else None


def _quantization(file_type: int | None, tensors: tuple[TensorEntry, ...]) -> str:
    if file_type is not None and file_type in _FTYPE_TO_QUANT:
        return _FTYPE_TO_QUANT[file_type]
    dominant = _dominant_type(tensors)
    if dominant is None:
        return "f32"
    if dominant in _FLOAT_TYPES:
        return _FLOAT_TYPES[dominant]
    key = _TENSOR_TYPE_TO_QUANT.get(dominant, dominant.lower())
    return key


def info_from_header(header: GGUFHeader) -> GGUFInfo:
    kv = header.kv
    arch = _str(kv.get("general.architecture"))
    if not arch:
        raise GGUFError("the GGUF file has no general.architecture")
    raw_ftype = _int(kv.get("general.file_type"))
    file_type = raw_ftype & ~_LLAMA_FTYPE_GUESSED if raw_ftype is not None else None
    quant = _quantization(file_type, header.tensors)
    n_params = sum(t.n_elements for t in header.tensors)
    alpha = kv.get("adapter.lora.alpha")
    types = Counter(t.type.name for t in header.tensors)
    return GGUFInfo(
        architecture=arch,
        name=_str(kv.get("general.name")),
        param_count=n_params,
        param_size=size_label(n_params),
        file_type=file_type,
        quantization=quant,
        precision=quantization_precision(quant),
        context_length=_int(kv.get(f"{arch}.context_length")),
        embedding_length=_int(kv.get(f"{arch}.embedding_length")),
        block_count=_int(kv.get(f"{arch}.block_count")),
        chat_template=_str(kv.get("tokenizer.chat_template")),
        is_adapter=kv.get("general.type") == "adapter",
        adapter_type=_str(kv.get("adapter.type")),
        lora_alpha=float(alpha) if isinstance(alpha, int | float) and not isinstance(alpha, bool) else None,
        pooling_type=_int(kv.get(f"{arch}.pooling_type")),
        tokenizer_model=_str(kv.get("tokenizer.ggml.model")),
        tensor_count=len(header.tensors),
        tensor_bytes=sum(t.n_bytes for t in header.tensors),
        tensor_types=dict(sorted(types.items())),
    )


def read_gguf_info(path: Path) -> GGUFInfo:
    """Summarise the GGUF file at ``path``; a file that is not GGUF raises :class:`GGUFError`.
    Remembered per process for the file as it is (device, inode, size, mtime): a build reads each of its
    GGUFs' summaries several times (quantize, verify, package), and parsing a 49k-token vocabulary costs."""
    try:
        st = path.stat()
    except OSError:
        return info_from_header(read_gguf_header(path))  # its error says what is wrong with the path
    return _info(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _info(path: Path, dev: int, ino: int, size: int, mtime_ns: int) -> GGUFInfo:
    return info_from_header(read_gguf_header(path))


def is_quantized(info: GGUFInfo) -> bool:
    """Whether the file's weights are already quantized (not f32/f16/bf16)."""
    return info.precision not in ("f32", "f16", "bf16", "f64")


def projector_media(path: Path) -> tuple[str, ...]:
    """What a multimodal projector GGUF encodes besides text: ``image`` and/or ``audio`` (its
    ``clip.has_vision_encoder`` / ``clip.has_audio_encoder``), for ModelPack's ``capabilities.inputTypes``."""
    kv = read_gguf_header(path).kv
    kinds = (("image", "vision"), ("audio", "audio"))
    return tuple(m for m, key in kinds if kv.get(f"clip.has_{key}_encoder"))
