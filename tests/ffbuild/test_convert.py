"""convert: HF folders → GGUF by llama.cpp's own converter (run from the llama-cpp-python sdist .ci/setup
keeps), checked through llama.cpp and the reference libraries; its failures as clear build errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ffbuild.stages.convert import convert_hf_to_gguf, supported_architectures
from ffbuild.stages.convert.source import ENV_VAR, ConverterMissingError, LlamaCppSource, llama_cpp_source
from ffbuild.stages.errors import ConvertError, UnsupportedArchitectureError
from ffbuild.stages.gguf_info import read_gguf_header
from ffruntime.llamacpp.eval import LlamaEval

TEXTS = [
    "Hello world",
    "The year 2024 had 366 days; 3.14159 is pi.",
    "  leading spaces and\ttabs\nnew lines",
    "naïve café — Übermaß, 東京, привет 🚀",
    "<|im_start|>user\nHi<|im_end|>",
    "don't won't it's I'll you're",
]
SENTENCES = [
    "The cat sleeps on the warm windowsill.",
    "A quick brown fox jumps over the lazy dog.",
    "Paris is the capital and largest city of France.",
    "Interest rates rose for the third quarter in a row.",
    "How do I reset my password?",
    "Photosynthesis converts light energy into chemical energy.",
    "She scored the winning goal in the final minute!",
    "El perro corre en el parque con su dueño.",
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_smollm2_metadata(smollm2_hf: Path, smollm2_f16: Path) -> None:
    kv = read_gguf_header(smollm2_f16).kv
    assert kv["general.architecture"] == "llama" and kv["general.type"] == "model"
    assert kv["general.name"] == "SmolLM2-135M-Instruct"
    assert kv["general.file_type"] == 1
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "smollm"
    assert kv["tokenizer.ggml.add_bos_token"] is False
    assert (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert kv["tokenizer.chat_template"] == (smollm2_hf / "chat_template.jinja").read_text()
    config = json.loads((smollm2_hf / "config.json").read_text())
    assert kv["llama.attention.head_count"] == config["num_attention_heads"]
    assert kv["llama.attention.head_count_kv"] == config["num_key_value_heads"]
    assert kv["llama.rope.freq_base"] == config["rope_parameters"]["rope_theta"]
    types = {t.name: t.type.name for t in read_gguf_header(smollm2_f16).tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == "F16"
    assert types["token_embd.weight"] == "F16" and "output.weight" not in types  # tied embeddings


@pytest.mark.slow
def test_smollm2_tokenizes_like_its_tokenizer(smollm2_hf: Path, smollm2_f16: Path) -> None:
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(smollm2_hf / "tokenizer.json"))
    with LlamaEval(smollm2_f16) as m:
        for text in TEXTS:
            assert m.tokenize(text, add_special=False, parse_special=True) == ref.encode(text).ids, text


@pytest.mark.slow
def test_smollm2_f32_logits_match_transformers(smollm2_hf: Path, smollm2_f32: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    out = smollm2_f32
    ids = [19556, 905, 28, 614, 1462, 314, 260, 3575, 282, 4649, 47]
    with LlamaEval(out, threads=1) as m:
        ours = m.logits(ids)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ours - ref).max() < 0.01 * np.abs(ref).max()
    assert (ours.argmax(1) == ref.argmax(1)).all()


@pytest.mark.slow
def test_conversion_is_byte_deterministic(smollm2_hf: Path, smollm2_f16: Path, tmp_path: Path) -> None:
    """No timestamps in the converter's output: build digests stay reproducible."""
    again = tmp_path / "again.gguf"
    convert_hf_to_gguf(smollm2_hf, again, "f16")
    assert sha256(again) == sha256(smollm2_f16)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


@pytest.mark.slow
def test_minilm_embeddings_match_sentence_transformers(minilm_folder: Path, minilm_f16: Path) -> None:
    from llama_cpp import Llama
    from sentence_transformers import SentenceTransformer

    kv = read_gguf_header(minilm_f16).kv
    assert kv["general.architecture"] == "bert" and kv["bert.pooling_type"] == 1  # mean
    assert kv["tokenizer.ggml.model"] == "bert"
    llm = Llama(str(minilm_f16), embedding=True, n_threads=1, verbose=False)
    ours = np.array([llm.embed(s, normalize=True) for s in SENTENCES])
    ref = SentenceTransformer(str(minilm_folder), device="cpu").encode(SENTENCES, normalize_embeddings=True)
    cosines = (ours * ref).sum(axis=1)
    assert cosines.min() >= 0.99, cosines
    # and the model tells the sentences apart: they are not all one vector
    assert (ours @ ours.T)[~np.eye(len(SENTENCES), dtype=bool)].max() < 0.9


@pytest.mark.slow
def test_minilm_tokenizes_like_its_tokenizer(minilm_folder: Path, minilm_f16: Path) -> None:
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(minilm_folder / "tokenizer.json"))
    ref.no_truncation()
    ref.no_padding()
    with LlamaEval(minilm_f16, embedding=True) as m:
        for text in SENTENCES + TEXTS[:4]:
            assert m.tokenize(text, add_special=True) == ref.encode(text).ids, text


def _copy_folder(src: Path, dst: Path) -> Path:
    """A writable copy with the big weight files symlinked."""
    dst.mkdir()
    for p in src.iterdir():
        if p.suffix == ".safetensors":
            os.symlink(p, dst / p.name)
        elif p.is_dir():
            shutil.copytree(p, dst / p.name)
        else:
            shutil.copy(p, dst / p.name)
    return dst


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_unsupported_architecture_names_it_and_lists_the_supported(
    minilm_folder: Path, tmp_path: Path
) -> None:
    folder = _copy_folder(minilm_folder, tmp_path / "m")
    _edit_json(folder / "config.json", architectures=["NoSuchModelForCausalLM"])
    with pytest.raises(UnsupportedArchitectureError) as e:
        convert_hf_to_gguf(folder, tmp_path / "out.gguf")
    assert "'NoSuchModelForCausalLM'" in str(e.value) and "llama.cpp's converter" in str(e.value)
    supported = supported_architectures(llama_cpp_source())
    assert len(supported) > 150  # the converter's own registrations, not a list of ff's
    for name in ("LlamaForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM", "BertModel"):
        assert name in str(e.value) and name in supported
    assert not (tmp_path / "out.gguf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (lambda f: (f / "config.json").unlink(), "no config.json"),
        (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda f: (f / "model.safetensors").unlink(), r"no weights \(\*\.safetensors\)"),
        (
            lambda f: [(f / n).unlink() for n in ("tokenizer.json", "vocab.txt")],
            "BertModel\\) has no tokenizer",
        ),
    ],
)
def test_bad_folders_are_refused_before_the_converter(
    minilm_folder: Path, tmp_path: Path, breaker: object, message: str
) -> None:
    folder = _copy_folder(minilm_folder, tmp_path / "m")
    breaker(folder)  # type: ignore[operator]
    with pytest.raises(ConvertError, match=message):
        convert_hf_to_gguf(folder, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_converter_failure_quotes_its_message(minilm_folder: Path, tmp_path: Path) -> None:
    """What only the converter notices (a truncated weight file) comes back in its own words."""
    folder = _copy_folder(minilm_folder, tmp_path / "m")
    src = (folder / "model.safetensors").resolve()
    (folder / "model.safetensors").unlink()
    with src.open("rb") as r:
        (folder / "model.safetensors").write_bytes(r.read(2_000_000))
    with pytest.raises(ConvertError) as e:
        convert_hf_to_gguf(folder, tmp_path / "out.gguf")
    text = str(e.value)
    assert "llama.cpp's convert_hf_to_gguf.py" in text and "failed on m (BertModel)" in text
    assert "Traceback" not in text and len(text.splitlines()) <= 4, text
    assert not (tmp_path / "out.gguf").exists()


def test_bad_outtype(minilm_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="f32, f16, bf16"):
        convert_hf_to_gguf(minilm_folder, tmp_path / "x.gguf", "q4_0")


def test_a_missing_converter_names_the_setup_step(
    minilm_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(ConverterMissingError, match=r"run \.ci/setup .*pip download --no-deps --no-binary"):
        convert_hf_to_gguf(minilm_folder, tmp_path / "x.gguf")


def test_the_converter_digest_covers_its_code(tmp_path: Path) -> None:
    """The build-cache key holds this digest: editing any converter file changes it."""
    real = llama_cpp_source()
    copy = tmp_path / "src"
    vendored = copy / "vendor" / "llama.cpp"
    vendored.mkdir(parents=True)
    for name in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py"):
        shutil.copy(real.llama_cpp / name, vendored / name)
    shutil.copytree(real.llama_cpp / "conversion", vendored / "conversion")
    shutil.copytree(real.gguf_py / "gguf", vendored / "gguf-py" / "gguf")
    assert LlamaCppSource(copy, real.version).digest == real.digest
    qwen = vendored / "conversion" / "qwen.py"
    qwen.write_text(qwen.read_text() + "\n# changed\n")
    edited = tmp_path / "edited"
    shutil.copytree(copy, edited)
    assert LlamaCppSource(edited, real.version).digest != real.digest


@pytest.mark.slow
def test_progress_is_reported(minilm_folder: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    convert_hf_to_gguf(minilm_folder, tmp_path / "m.gguf", "f16", report=seen.append)
    assert seen and all(m.startswith("model (BertModel): ") for m in seen)
    assert any("tensors planned" in m or "writing" in m for m in seen)


@pytest.mark.slow
def test_offline_hub_snapshot_converts_like_the_folder(
    minilm_hf_cache: tuple[Path, str], minilm_f16: Path, tmp_path: Path
) -> None:
    from huggingface_hub import snapshot_download

    hf_home, repo = minilm_hf_cache
    minilm = Path(snapshot_download(repo, cache_dir=hf_home / "hub", local_files_only=True))
    out = tmp_path / "minilm.gguf"
    convert_hf_to_gguf(minilm, out, "f16", name="model")  # the shipped folder is called "model"
    assert sha256(out) == sha256(minilm_f16)
