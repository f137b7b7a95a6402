"""convert: SmolLM2 and MiniLM HF folders → GGUF, checked through llama.cpp and the reference libraries."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ffbuild.stages.convert import SUPPORTED_ARCHITECTURES, convert_hf_to_gguf
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
def test_smollm2_f32_logits_match_transformers(smollm2_hf: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "f32.gguf"
    convert_hf_to_gguf(smollm2_hf, out, "f32")
    ids = [19556, 905, 28, 614, 1462, 314, 260, 3575, 282, 4649, 47]
    with LlamaEval(out, threads=1) as m:
        ours = m.logits(ids)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ours - ref).max() < 0.01 * np.abs(ref).max()
    assert (ours.argmax(1) == ref.argmax(1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f16", "bf16"])
def test_conversion_is_byte_deterministic(smollm2_hf: Path, tmp_path: Path, outtype: str) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    convert_hf_to_gguf(smollm2_hf, a, outtype)
    convert_hf_to_gguf(smollm2_hf, b, outtype)
    assert sha256(a) == sha256(b)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


@pytest.mark.slow
def test_hub_snapshot_converts_to_the_same_bytes(
    smollm2_hf_cache: tuple[Path, str], smollm2_f16: Path, tmp_path: Path
) -> None:
    hf_home, repo = smollm2_hf_cache
    repo_dir = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / (repo_dir / "refs" / "main").read_text().strip()
    out = tmp_path / "hub.gguf"
    convert_hf_to_gguf(snapshot, out, "f16")
    assert sha256(out) == sha256(smollm2_f16)


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


def test_unsupported_architecture_lists_the_supported(minilm_folder: Path, tmp_path: Path) -> None:
    folder = _copy_folder(minilm_folder, tmp_path / "m")
    _edit_json(folder / "config.json", architectures=["GPT2LMHeadModel"])
    with pytest.raises(UnsupportedArchitectureError) as e:
        convert_hf_to_gguf(folder, tmp_path / "out.gguf")
    assert "GPT2LMHeadModel" in str(e.value)
    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "BertModel"):
        assert name in str(e.value) and name in SUPPORTED_ARCHITECTURES
    assert isinstance(e.value, ConvertError)
    assert not (tmp_path / "out.gguf").exists()


def _break_no_config(f: Path) -> None:
    (f / "config.json").unlink()


def _break_config_json(f: Path) -> None:
    (f / "config.json").write_text("{not json")


def _break_no_weights(f: Path) -> None:
    (f / "model.safetensors").unlink()


def _break_header(f: Path) -> None:
    (f / "model.safetensors").unlink()
    (f / "model.safetensors").write_bytes((100).to_bytes(8, "little") + b"{" * 100)


def _break_truncated(f: Path) -> None:
    src = (f / "model.safetensors").resolve()
    (f / "model.safetensors").unlink()
    with src.open("rb") as r:
        (f / "model.safetensors").write_bytes(r.read(2_000_000))


def _break_no_tokenizer(f: Path) -> None:
    (f / "tokenizer.json").unlink()


def _break_hidden_size(f: Path) -> None:
    _edit_json(f / "config.json", num_hidden_layers=-3)


def _break_vocab_size(f: Path) -> None:
    _edit_json(f / "config.json", vocab_size=1000)


def _break_pooling_path(f: Path) -> None:
    modules = json.loads((f / "modules.json").read_text())
    modules[1]["path"] = "../../../etc"
    (f / "modules.json").write_text(json.dumps(modules))


def _break_index(f: Path) -> None:
    (f / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../../etc/passwd"}}))


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (_break_no_config, "no config.json"),
        (_break_config_json, "not valid JSON"),
        (_break_no_weights, "no \\*.safetensors"),
        (_break_header, "not valid JSON"),
        (_break_truncated, "past the end of the file"),
        (_break_no_tokenizer, "no tokenizer.json"),
        (_break_hidden_size, "num_hidden_layers must be a positive integer"),
        (_break_vocab_size, "outside config.json's vocab_size"),
        (_break_index, "not a plain"),
        (_break_pooling_path, "leaves the model folder"),
    ],
)
def test_bad_folders_give_clear_errors(
    minilm_folder: Path, tmp_path: Path, breaker: object, message: str
) -> None:
    folder = _copy_folder(minilm_folder, tmp_path / "m")
    breaker(folder)  # type: ignore[operator]
    out = tmp_path / "out.gguf"
    with pytest.raises(ConvertError, match=message):
        convert_hf_to_gguf(folder, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_outtype(minilm_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="f32, f16, bf16"):
        convert_hf_to_gguf(minilm_folder, tmp_path / "x.gguf", "q4_0")


@pytest.mark.slow
def test_offline_hub_caches_resolve(
    smollm2_hf_cache: tuple[Path, str], minilm_hf_cache: tuple[Path, str], minilm_f16: Path, tmp_path: Path
) -> None:
    """The hub-cache fixtures are what huggingface_hub finds offline, and they convert like the folders."""
    from huggingface_hub import snapshot_download

    for hf_home, repo in (smollm2_hf_cache, minilm_hf_cache):
        path = Path(snapshot_download(repo, cache_dir=hf_home / "hub", local_files_only=True))
        assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    hf_home, repo = minilm_hf_cache
    minilm = Path(snapshot_download(repo, cache_dir=hf_home / "hub", local_files_only=True))
    out = tmp_path / "minilm.gguf"
    convert_hf_to_gguf(minilm, out, "f16", name="model")  # the shipped folder is called "model"
    assert sha256(out) == sha256(minilm_f16)


@pytest.mark.slow
def test_conversion_streams(smollm2_hf: Path, tmp_path: Path) -> None:
    """Peak memory stays near one copy of the weights (the memory-mapped source), not two."""
    import subprocess
    import sys

    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a
    # large pytest process would report the parent's peak; VmHWM belongs to the new address space.
    code = (
        "import sys; from pathlib import Path\n"
        "from ffbuild.stages.convert import convert_hf_to_gguf\n"
        "convert_hf_to_gguf(Path(sys.argv[1]), Path(sys.argv[2]), 'f16')\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(int(hwm.split()[1]) * 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(smollm2_hf), str(tmp_path / "x.gguf")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    peak = int(out.stdout.split()[-1])
    source = (smollm2_hf / "model.safetensors").stat().st_size
    assert peak < source + 250 * 1024 * 1024, (peak, source)
