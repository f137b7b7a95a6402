"""Families llama.cpp's converter knows, proved numerically: a tiny random model of each (made by
transformers from a config, cached) is built by ``ff build`` (f16 and q8_0, verify on), its stored
GGUFs are loaded by ffruntime, and their logits (embeddings for BERT) agree with transformers' on the
same tokens: cosine ≥ 0.999 at every position and greedy next-token agreement ≥ 0.95 at f16; at q8_0 a
mean cosine ≥ 0.99 (the top-2 margins of random logits are so small that q8_0 flips 5-15 % of greedy
tokens, so its agreement is held to ≥ 0.75 only). Random weights prove the
conversion, not quality (the real SmolLM2 and MiniLM builds are tests/ffbuild/test_build_smollm2.py and
test_convert.py)."""

from __future__ import annotations

import importlib.metadata
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
from tests.models import FAMILIES, RECIPE, cached_dir, random_bert, random_decoder

pytestmark = pytest.mark.slow

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest."
SENTENCES = [
    "The cat sleeps on the warm windowsill.",
    "Paris is the capital of France.",
    "How do I reset it?",
]
CACHE = Path.home() / ".cache" / "ferrousforge-tests" / "families-build-cache"


def _key(name: str) -> str:
    return f"family-{name}-tf{importlib.metadata.version('transformers')}-r{RECIPE}"


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


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decoder_family_matches_transformers(family: str, smollm2_hf: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cached_dir(_key(family), family, lambda d: random_decoder(family, smollm2_hf, d))
    ids = AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    ggufs = _build(folder, tmp_path, "generate")
    assert set(ggufs) == {"f16", "q8_0"}
    for quant, path in ggufs.items():
        with LlamaEval(path, threads=1) as m:
            ours = m.logits(ids)
        cos = _cosines(ours, ref)
        agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
        if quant == "f16":
            assert cos.min() >= 0.999 and agree >= 0.95, (family, quant, cos.min(), agree)
        else:  # q8_0 of random weights: tiny top-2 margins flip (measured 0.85-0.95)
            assert cos.mean() >= 0.99 and agree >= 0.75, (family, quant, cos.mean(), agree)


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
