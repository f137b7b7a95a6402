"""Embeddings from an embedding model: all-MiniLM-L6-v2 converted to GGUF by the build's converter,
served by the shared ``ff serve`` through both APIs."""

from __future__ import annotations

import math
import os
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from registry.store import Store
from tests.ffserve.serve_testkit import CACHE, Server
from tests.models import add_model

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply."]


@pytest.fixture(scope="module")
def minilm(minilm_folder: Path, ff_home: Path) -> str:
    from ffbuild.stages.convert import convert_hf_to_gguf  # the test may use the compiler; ffserve never does

    out = CACHE / f"minilm-{(minilm_folder / 'model.safetensors').stat().st_size}-f16.gguf"
    if not out.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        convert_hf_to_gguf(minilm_folder, tmp, "f16")
        os.replace(tmp, out)
    add_model(Store(ff_home / "store"), "minilm:latest", {"f16": out}, task="embed")
    return "minilm"


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_minilm_embeddings_through_both_apis(server: Server, minilm: str) -> None:
    oc = ollama.Client(host=server.url)
    vecs = [list(v) for v in oc.embed(model=minilm, input=SENTENCES).embeddings]
    assert len(vecs) == 3 and len(vecs[0]) == 384
    assert _cos(vecs[0], vecs[1]) > 0.5 > _cos(vecs[0], vecs[2])
    ai = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    r = ai.embeddings.create(model=minilm, input=SENTENCES)
    assert all(_cos(list(d.embedding), v) > 0.9999 for d, v in zip(r.data, vecs, strict=True))
    assert r.usage.prompt_tokens > 10
    shown = httpx.post(server.url + "/api/show", json={"model": minilm}).json()
    assert shown["capabilities"] == ["embedding"]
    with pytest.raises(ollama.ResponseError) as err:
        oc.generate(model=minilm, prompt="hello")
    assert err.value.status_code == 400 and "does not support" in err.value.error


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(server: Server, minilm: str, minilm_folder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(minilm_folder), device="cpu").encode(SENTENCES)
    ours = ollama.Client(host=server.url).embed(model=minilm, input=SENTENCES).embeddings
    for a, b in zip(ours, ref, strict=True):
        assert _cos(list(a), [float(x) for x in b]) > 0.99
