"""Families llama.cpp's converter knows, proved numerically: a tiny random model of each (made by
transformers from a config, cached) is built by ``ff build`` (f16 and q8_0, verify on), its stored
GGUFs are loaded by ffruntime, and their logits (embeddings for BERT) agree with transformers' on the
same tokens at every position of a 62-token text: greedy next-token agreement ≥ 0.95 at f16 and at
q8_0, cosine ≥ 0.999 at every position at f16 and ≥ 0.99 on average at q8_0.

The decoders' logits are decisive, as a trained model's are (:func:`tests.models.random_decoder`: token
embeddings scaled, an untied head a shuffled copy of them): with purely random weights the top two of
49k logits are so close (0.16 standard deviations at the median) that q8_0's rounding flipped 5-15 % of
the greedy tokens of a correct conversion. Every position is compared, against transformers' f32 model.
Random weights prove the conversion, not quality (the real SmolLM2 and MiniLM builds are
tests/ffbuild/test_build_smollm2.py and test_convert.py)."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np
import pytest

from ffbuild.build import build
from ffbuild.cache import BuildCache
from ffbuild.modelfile import parse
from ffbuild.planner import make_plan
from ffruntime.llamacpp.eval import LlamaEval
from registry.artifact import open_variant, variants_of
from registry.reference import parse_reference
from registry.store import Store
from tests.models import (
    DECODER_RECIPE,
    FAMILIES,
    PHI3_ADDED,
    RECIPE,
    cached_dir,
    random_bert,
    random_decoder,
    random_phi3_sentencepiece,
    sha256_of,
)

pytestmark = pytest.mark.slow

TEXT = (
    "The river rises in the hills to the north of the town and runs south through a wide valley of farms "
    "and small villages. In spring the water is high and fast, and the old stone bridge near the market "
    "is sometimes closed for a few days. Most of the year, however, the river is calm."
)
SENTENCES = [
    "The cat sleeps on the warm windowsill.",
    "Paris is the capital of France.",
    "How do I reset it?",
]
CACHE = Path.home() / ".cache" / "ferrousforge-tests" / "families-build-cache"


def _key(name: str) -> str:
    recipe = RECIPE if name == "bert" else f"{RECIPE}-{DECODER_RECIPE}"
    return f"family-{name}-tf{importlib.metadata.version('transformers')}-r{recipe}"


def _build(folder: Path, tmp_path: Path, task: str) -> dict[str, Path]:
    """``ff build`` of ``folder`` at f16 and q8_0; the stored GGUF of each variant."""
    text = f"FROM {folder}\nQUANTIZE f16 q8_0\nTASK {task}\n"
    plan = make_plan(parse(text), context=tmp_path)
    store = Store(tmp_path / "store")
    build(plan, parse_reference("fam:1"), store=store, cache=BuildCache(CACHE))
    ref = parse_reference("fam:1")
    return {
        v.quantization: open_variant(store, v.descriptor.digest).weights[0] for v in variants_of(store, ref)
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _check_decoder(family: str, folder: Path, ids: list[int], tmp_path: Path) -> dict[str, Path]:
    """Builds ``folder`` and checks its GGUFs' logits on ``ids`` against transformers'; the GGUFs."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    ggufs = _build(folder, tmp_path, "generate")
    assert set(ggufs) == {"f16", "q8_0"} and len(ids) >= 60
    for quant, path in ggufs.items():
        with LlamaEval(path, threads=1) as m:
            ours = m.logits(ids)
        cos = _cosines(ours, ref)
        agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
        print(f"{family} {quant}: agreement {agree:.3f}, cosine min {cos.min():.5f} mean {cos.mean():.5f}")
        assert agree >= 0.95, (family, quant, agree)
        if quant == "f16":
            assert cos.min() >= 0.999, (family, quant, cos.min())
        else:
            assert cos.mean() >= 0.99, (family, quant, cos.mean())
    return ggufs


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoder_family_matches_transformers(family: str, smollm2_hf: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = cached_dir(_key(family), family, lambda d: random_decoder(family, smollm2_hf, d))
    _check_decoder(family, folder, AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"], tmp_path)


def test_phi3_mini_sentencepiece_matches_transformers(tmp_path: Path) -> None:
    """Phi-3-mini's layout: ``Phi3ForCausalLM`` with a Llama-style SentencePiece ``tokenizer.model`` and
    added chat tokens (:func:`tests.models.random_phi3_sentencepiece`, trained on Python's LICENSE text, or
    on this repository's README where a Python build ships no LICENSE.txt),
    in a folder whose name says Phi-3 (llama.cpp then sets Phi-3's token attributes by name). Besides
    the logits, llama.cpp's tokenizer splits the text and the chat tokens as SentencePiece does."""
    import sentencepiece as spm

    corpus = Path(os.__file__).parent / "LICENSE.txt"
    if not corpus.is_file():
        corpus = Path(__file__).resolve().parents[2] / "README.md"
    key = f"{_key('phi3-spm')}-{sha256_of(corpus)[:16]}"
    folder = cached_dir(key, "Phi-3-mini-4k-instruct", lambda d: random_phi3_sentencepiece(corpus, d))
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    ids = [sp.bos_id(), *sp.encode(TEXT)]
    ggufs = _check_decoder("phi3-spm", folder, ids, tmp_path)
    with LlamaEval(ggufs["f16"], threads=1) as m:
        assert m.meta("tokenizer.ggml.model") == "llama"
        assert m.tokenize(TEXT) == ids
        chat = "<|user|>\nHow do I reset it?<|end|>\n<|assistant|>\n"
        tokens = m.tokenize(chat, parse_special=True)
        added = {t: sp.vocab_size() + i for i, t in enumerate(PHI3_ADDED)}
        chat_tokens = [added[t] for t in ("<|user|>", "<|end|>", "<|assistant|>")]
        assert [t for t in tokens if t >= sp.vocab_size()] == chat_tokens
        assert m.eos == added["<|endoftext|>"] and m.is_eog(added["<|end|>"])


def test_bert_encoder_matches_transformers(minilm_folder: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = cached_dir(_key("bert"), "bert", lambda d: random_bert(minilm_folder, d))
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    refs = []
    with torch.no_grad():
        for s in SENTENCES:
            enc = tok(s, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0].numpy()
            refs.append(hidden.mean(0))  # mean pooling (the folder's 1_Pooling)
    ref = np.array(refs)
    ggufs = _build(folder, tmp_path, "embed")
    for quant, path in ggufs.items():
        with LlamaEval(path, embedding=True, threads=1) as m:
            ours = np.array([m.embed(s) for s in SENTENCES])
        cos = _cosines(ours, ref)
        assert cos.min() >= (0.999 if quant == "f16" else 0.99), (quant, cos)
