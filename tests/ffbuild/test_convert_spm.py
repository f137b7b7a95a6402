"""convert: SentencePiece ("llama") vocabularies, from tokenizer.model and from a tokenizer.json.

A small BPE SentencePiece model is trained here (sentencepiece), put into a tiny random Llama folder
and converted; llama.cpp must then tokenize like sentencepiece (for tokenizer.model) and like the
tokenizers library (for the tokenizer.json transformers derives from it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ffbuild.stages.convert import convert_hf_to_gguf
from ffbuild.stages.gguf_info import read_gguf_header
from ffbuild.stages.verify.gguf import DEFAULT_TEXT, EMBED_SENTENCES
from ffruntime.llamacpp.eval import LlamaEval

TEXTS = [
    "Hello world, this is a test of the river and the bridge.",
    "  two  spaces and a\ttab",
    "ünïcödé 東京 🚀 — bytes fall back",
    "The town council planted 123 trees in 2024.",
    "x",
]


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sentencepiece as spm
    import transformers

    root = tmp_path_factory.mktemp("spm")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join([*DEFAULT_TEXT.split(". "), *EMBED_SENTENCES] * 3) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "spm"), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2,
    )  # fmt: skip
    n_vocab = spm.SentencePieceProcessor(model_file=str(root / "spm.model")).vocab_size()
    folder = root / "model"
    config = transformers.LlamaConfig(
        vocab_size=n_vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    shutil.copy(root / "spm.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True})
    )
    return folder


@pytest.mark.slow
def test_tokenizer_model(spm_folder: Path, tmp_path: Path) -> None:
    import sentencepiece

    out = tmp_path / "m.gguf"
    convert_hf_to_gguf(spm_folder, out, "f32")
    kv = read_gguf_header(out).kv
    assert kv["tokenizer.ggml.model"] == "llama" and kv["tokenizer.ggml.pre"] == "default"
    assert kv["tokenizer.ggml.add_bos_token"] is True
    ref = sentencepiece.SentencePieceProcessor(model_file=str(spm_folder / "tokenizer.model"))
    with LlamaEval(out) as m:
        assert m.token_text(0) == "<unk>" and m.token_text(1) == "<s>" and m.token_text(2) == "</s>"
        for text in TEXTS:
            assert m.tokenize(text, add_special=True) == [1, *ref.encode(text)], text


@pytest.mark.slow
def test_tokenizer_json(spm_folder: Path, tmp_path: Path) -> None:
    import transformers
    from tokenizers import Tokenizer

    folder = tmp_path / "json"
    shutil.copytree(spm_folder, folder)
    transformers.AutoTokenizer.from_pretrained(str(spm_folder)).save_pretrained(folder)
    (folder / "tokenizer.model").unlink(missing_ok=True)
    model = json.loads((folder / "tokenizer.json").read_text())["model"]
    assert model["type"] == "BPE" and model["byte_fallback"]
    out = tmp_path / "m.gguf"
    convert_hf_to_gguf(folder, out, "f32")
    assert read_gguf_header(out).kv["tokenizer.ggml.model"] == "llama"
    ref = Tokenizer.from_file(str(folder / "tokenizer.json"))
    with LlamaEval(out) as m:
        for text in TEXTS:
            assert m.tokenize(text, add_special=True) == ref.encode(text).ids, text
