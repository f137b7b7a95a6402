"""quantize: every GGUF type of choices.QUANTIZATIONS through llama.cpp, and the refusals."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ffbuild.stages.errors import GGUFError, QuantizeError, RequantizeError
from ffbuild.stages.gguf_info import read_gguf_info
from ffbuild.stages.quantize import check_quantization, quantize_gguf
from ffbuild.stages.verify.gguf import verify_gguf
from registry.choices import GGUF_QUANTS, QUANTIZATIONS

IMATRIX_TYPES = [k for k in GGUF_QUANTS if QUANTIZATIONS[k]["needs_imatrix"]]
PLAIN_TYPES = [k for k in GGUF_QUANTS if not QUANTIZATIONS[k]["needs_imatrix"]]


def test_ftype_ids_are_llama_cpp_constants() -> None:
    import llama_cpp

    for key in GGUF_QUANTS:
        ftype = QUANTIZATIONS[key]["ftype"]
        const = "LLAMA_FTYPE_ALL_F32" if key == "f32" else f"LLAMA_FTYPE_MOSTLY_{key.upper()}"
        assert getattr(llama_cpp, const) == ftype, (key, const)


@pytest.mark.parametrize("quant", IMATRIX_TYPES)
def test_imatrix_types_are_refused(quant: str) -> None:
    with pytest.raises(QuantizeError, match="importance matrix"):
        check_quantization(quant)


@pytest.mark.parametrize("quant", ["q9_9", "int8", "fp16", ""])
def test_unknown_types_are_refused(quant: str) -> None:
    with pytest.raises(QuantizeError, match="unknown GGUF quantization"):
        check_quantization(quant)


def test_names_are_case_insensitive() -> None:
    assert check_quantization(" Q4_K_M ") == "q4_k_m"


@pytest.mark.slow
@pytest.mark.parametrize("quant", PLAIN_TYPES)
def test_every_type_on_minilm(minilm_f16: Path, tmp_path: Path, quant: str) -> None:
    out = tmp_path / f"{quant}.gguf"
    info = quantize_gguf(minilm_f16, out, quant, threads=1)
    assert info.file_type == QUANTIZATIONS[quant]["ftype"]
    assert info.quantization == quant
    assert info.architecture == "bert" and info.param_count == read_gguf_info(minilm_f16).param_count
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m", "q5_k_m", "bf16"])
def test_quantized_minilm_still_embeds(minilm_f16: Path, tmp_path: Path, quant: str) -> None:
    out = tmp_path / f"{quant}.gguf"
    quantize_gguf(minilm_f16, out, quant)
    report = verify_gguf(out, reference=minilm_f16)
    assert report.loads and report.agreement is not None and report.agreement > 0.97, report


@pytest.mark.slow
def test_smollm2_q8_0_and_q4_k_m(smollm2_f16: Path, smollm2_q8_0: Path, smollm2_q4_k_m: Path) -> None:
    f16, q8, q4 = (read_gguf_info(p) for p in (smollm2_f16, smollm2_q8_0, smollm2_q4_k_m))
    assert (q8.quantization, q8.precision, q8.file_type) == ("q8_0", "int8", 7)
    assert (q4.quantization, q4.precision, q4.file_type) == ("q4_k_m", "int4", 15)
    assert q4.tensor_bytes < q8.tensor_bytes < f16.tensor_bytes
    assert q8.param_count == q4.param_count == f16.param_count
    assert q8.chat_template == q4.chat_template == f16.chat_template


@pytest.mark.slow
def test_requantize_is_refused_without_the_flag(
    smollm2_q8_0: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "q4_0.gguf"
    with pytest.raises(RequantizeError, match="already quantized"):
        quantize_gguf(smollm2_q8_0, out, "q4_0")
    assert not out.exists()
    with caplog.at_level(logging.WARNING, logger="ffbuild.stages.quantize"):
        info = quantize_gguf(smollm2_q8_0, out, "q4_0", allow_requantize=True)
    assert info.quantization == "q4_0"
    assert "requantizing" in caplog.text and "quality" in caplog.text


def test_not_a_gguf(tmp_path: Path) -> None:
    src = tmp_path / "x.gguf"
    src.write_bytes(b"definitely not a model" * 10)
    with pytest.raises(GGUFError):
        quantize_gguf(src, tmp_path / "y.gguf", "q8_0")
    assert not (tmp_path / "y.gguf").exists()


@pytest.mark.slow
def test_same_source_and_destination(minilm_f16: Path) -> None:
    with pytest.raises(QuantizeError, match="same file"):
        quantize_gguf(minilm_f16, minilm_f16, "q8_0")


def test_side_by_side_quantizations_are_those_made_one_at_a_time(minilm_f16: Path, tmp_path: Path) -> None:
    """The quantize stage runs a build's quantizations at once (one per core): the outputs
    are byte for byte what the quantizer makes of each alone, on every core."""
    from ffbuild.build import BuildOptions, build
    from ffbuild.cache import BuildCache, file_digest
    from ffbuild.plan import BuildPlan, Source, SourceKind, Variant
    from registry.reference import parse_reference
    from registry.store import Store

    quants = ("q8_0", "q4_k_m", "q4_0")
    variants = tuple(Variant(quantization=q, device="cpu", backend="llamacpp", family="gguf") for q in quants)
    source = Source(kind=SourceKind.GGUF_FILE, raw=str(minilm_f16), path=minilm_f16)
    plan = BuildPlan.model_validate(
        {"modelfile": None, "context": Path("/"), "source": source, "variants": variants, "task": "embed"}
    )
    result = build(
        plan,
        parse_reference("side:latest"),
        store=Store(tmp_path / "store"),
        cache=BuildCache(tmp_path / "cache"),
        options=BuildOptions(verify=False),
    )
    digests = {v.variant.quantization: v.built.weight.digest for v in result.variants}
    for q in quants:
        alone = tmp_path / f"alone-{q}.gguf"
        quantize_gguf(minilm_f16, alone, q)
        assert digests[q] == file_digest(alone), q
