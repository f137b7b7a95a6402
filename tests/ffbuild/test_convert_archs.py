"""convert: small random Llama / Mistral / Qwen2 models (made with transformers) give llama.cpp logits
equal to transformers' — this checks the Q/K permutation, Qwen2's biases, llama3 rope factors, sharded
checkpoints and bf16 sources on real computations, not on metadata."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ffbuild.stages.convert import convert_hf_to_gguf
from ffbuild.stages.gguf_info import read_gguf_header
from ffruntime.llamacpp.eval import LlamaEval

IDS = [1, 19556, 905, 28, 614, 1462, 314, 260, 3575, 282, 4649, 47, 2, 198, 33, 34]
COMMON: dict[str, Any] = {
    "vocab_size": 49152,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _tiny(kind: str, folder: Path, tokenizer_from: Path, *, shard: str | None = None, **extra: Any) -> Any:
    import torch
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[kind]
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**COMMON, **extra}))
    gen = torch.Generator().manual_seed(42)
    with torch.no_grad():  # random everything, biases and norms included, so each one matters
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "norm" in name else 0.08 * noise)
    model.eval()
    dtype = torch.bfloat16 if shard else torch.float32
    model.to(dtype).save_pretrained(folder, max_shard_size=shard or "10GB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer_from / name, folder / name)
    return model.float()


def _compare(model: Any, gguf: Path) -> None:
    import torch

    with torch.no_grad():
        ref = model(torch.tensor([IDS])).logits[0].numpy()
    with LlamaEval(gguf, threads=1) as m:
        ours = m.logits(IDS)
    assert np.abs(ours - ref).max() < 0.01 * np.abs(ref).max(), np.abs(ours - ref).max()
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "extra", "arch"),
    [
        ("llama", {}, "llama"),
        ("mistral", {"sliding_window": None}, "llama"),
        ("qwen2", {}, "qwen2"),
        (
            "llama",
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                }
            },
            "llama",
        ),
    ],
    ids=["llama", "mistral", "qwen2-biases", "llama3-rope"],
)
def test_logits_match_transformers(
    smollm2_hf: Path, tmp_path: Path, kind: str, extra: dict[str, Any], arch: str
) -> None:
    model = _tiny(kind, tmp_path / "hf", smollm2_hf, **extra)
    out = tmp_path / "m.gguf"
    info = convert_hf_to_gguf(tmp_path / "hf", out, "f32")
    assert info.architecture == arch
    names = {t.name for t in read_gguf_header(out).tensors}
    assert ("blk.0.attn_q.bias" in names) == (kind == "qwen2")
    assert ("rope_freqs.weight" in names) == ("rope_scaling" in extra)
    _compare(model, out)


@pytest.mark.slow
def test_sharded_bf16_checkpoint(smollm2_hf: Path, tmp_path: Path) -> None:
    model = _tiny("llama", tmp_path / "hf", smollm2_hf, shard="2MB")
    shards = sorted(p.name for p in (tmp_path / "hf").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    out = tmp_path / "m.gguf"
    convert_hf_to_gguf(tmp_path / "hf", out, "f32")
    import torch

    # the reference is the same bf16 weights, computed in f32
    model.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
    _compare(model, out)
