"""gguf_info: the header reader against gguf.GGUFReader, the summary of real models, hostile files."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import pytest

from registry.gguf_info import (
    MAX_SMALL_ARRAY,
    LongArray,
    quantization_precision,
    read_gguf_header,
    read_gguf_info,
    size_label,
)
from registry.gguf_info import GGUFFormatError as GGUFError


def test_header_matches_gguf_reader(smollm2_gguf: Path) -> None:
    ours = read_gguf_header(smollm2_gguf)
    ref = gguf.GGUFReader(smollm2_gguf)
    assert ours.data_offset == ref.data_offset
    ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert set(ours.kv) == set(ref_fields)
    for key, field in ref_fields.items():
        value = ours.kv[key]
        if isinstance(value, LongArray):
            assert len(field.data) == value.count > MAX_SMALL_ARRAY, key
        elif isinstance(value, tuple):
            assert list(value) == field.contents(), key
        elif isinstance(value, float):
            assert value == pytest.approx(field.contents(), rel=1e-6), key
        else:
            assert value == field.contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for t, r in zip(ours.tensors, ref.tensors, strict=True):
        assert t.shape == tuple(int(d) for d in r.shape), t.name
        assert t.type == r.tensor_type and t.n_bytes == r.n_bytes and t.n_elements == r.n_elements
        assert ours.data_offset + t.offset == r.data_offset


def test_info_of_the_shipped_q4_1(smollm2_gguf: Path) -> None:
    info = read_gguf_info(smollm2_gguf)
    assert info.architecture == "llama"
    assert (info.file_type, info.quantization, info.precision) == (3, "q4_1", "int4")
    assert info.param_size == "135M" and 134_000_000 < info.param_count < 135_000_000
    assert (info.context_length, info.embedding_length, info.block_count) == (8192, 576, 30)
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert not info.is_adapter and info.tokenizer_model == "gpt2"
    assert info.tensor_types == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert info.tensor_bytes < smollm2_gguf.stat().st_size


@pytest.mark.parametrize(
    ("n", "label"),
    [
        (999, "999"),
        (22_565_376, "23M"),
        (134_515_008, "135M"),
        (1_543_714_304, "1.5B"),
        (7_000_000_000, "7B"),
        (70_553_706_496, "71B"),
        (4_000, "4K"),
    ],
)
def test_size_label(n: int, label: str) -> None:
    assert size_label(n) == label


@pytest.mark.parametrize(
    ("quant", "precision"),
    [
        ("f16", "f16"),
        ("bf16", "bf16"),
        ("f32", "f32"),
        ("q8_0", "int8"),
        ("q4_k_m", "int4"),
        ("q6_k", "int6"),
        ("iq4_xs", "int4"),
        ("q2_k", "int2"),
        ("iq1_s", "int1"),
        ("tq1_0", "ternary"),
        ("mxfp4", "mxfp4"),
    ],
)
def test_precision(quant: str, precision: str) -> None:
    assert quantization_precision(quant) == precision


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return struct.pack("<IIQQ", 0x46554747, version, n_tensors, n_kv)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty", b"", "not a GGUF file"),
        ("bad magic", b"GGML" + b"\0" * 40, "bad magic"),
        ("version 1", _header(0, 0, version=1), "unsupported GGUF version"),
        ("huge tensor count", _header(1 << 40, 0), "implausible tensor count"),
        ("truncated kv", _header(0, 1) + struct.pack("<Q", 1000) + b"abc", "truncated"),
        (  # a vocabulary-sized string array (skipped, not decoded) that ends early
            "string array cut short",
            _header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 100)
            + (struct.pack("<Q", 1) + b"a") * 99,
            "truncated",
        ),
        (
            "string in an array past the end",
            _header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 100)
            + (struct.pack("<Q", 1) + b"a") * 99 + struct.pack("<Q", 1 << 30),
            "truncated string",
        ),
        (
            "bad value type",
            _header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99),
            "unknown value type",
        ),
        (
            "no architecture",
            _header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<II", 4, 7),
            "architecture",
        ),
        (
            "tensor past the end",
            _header(1, 1)
            + struct.pack("<Q", 20)
            + b"general.architecture"
            + struct.pack("<IQ", 8, 5)
            + b"llama"
            + struct.pack("<Q", 1)
            + b"t"
            + struct.pack("<IQIQ", 1, 1 << 20, 0, 0),
            "past its end",
        ),
    ],
)
def test_hostile_files(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=message):
        read_gguf_info(path)


def test_truncated_real_file(smollm2_gguf: Path, tmp_path: Path) -> None:
    for size in (30, 4096, 1_000_000, smollm2_gguf.stat().st_size - 1):
        cut = tmp_path / f"cut-{size}.gguf"
        with smollm2_gguf.open("rb") as f:
            cut.write_bytes(f.read(size))
        with pytest.raises(GGUFError):
            read_gguf_info(cut)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot read"):
        read_gguf_info(tmp_path / "nope.gguf")


def test_the_build_sees_a_stage_error(tmp_path: Path) -> None:
    from ffbuild.stages.errors import GGUFError as StageGGUFError
    from ffbuild.stages.errors import StageError
    from ffbuild.stages.gguf_info import read_gguf_info as build_read

    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all, long enough to have a header")
    with pytest.raises(StageGGUFError, match="not a GGUF") as info:
        build_read(bad)
    assert isinstance(info.value, StageError)
