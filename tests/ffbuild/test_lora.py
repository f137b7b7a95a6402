"""lora: a PEFT LoRA on SmolLM2 → GGUF adapter that llama.cpp applies with the same effect as PEFT."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ffbuild.stages.convert import convert_hf_to_gguf
from ffbuild.stages.errors import LoraError
from ffbuild.stages.gguf_info import read_gguf_header
from ffbuild.stages.lora import check_gguf_lora, convert_peft_lora
from ffbuild.stages.verify.gguf import verify_gguf
from ffruntime.llamacpp.eval import LlamaEval

IDS = [19556, 905, 28, 614, 1462, 314, 260, 3575, 282, 4649, 47]


@pytest.fixture(scope="module")
def lora_gguf(smollm2_lora: Path, smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "adapter.gguf"
    convert_peft_lora(smollm2_lora, out, base=smollm2_hf)
    return out


@pytest.mark.slow
def test_adapter_metadata(lora_gguf: Path, smollm2_lora: Path) -> None:
    config = json.loads((smollm2_lora / "adapter_config.json").read_text())
    header = read_gguf_header(lora_gguf)
    assert header.kv["general.type"] == "adapter" and header.kv["adapter.type"] == "lora"
    assert header.kv["general.architecture"] == "llama"
    assert header.kv["adapter.lora.alpha"] == config["lora_alpha"]
    names = {t.name for t in header.tensors}
    assert len(names) == 2 * 7 * 30  # a and b, 7 projections, 30 blocks
    assert {"blk.0.attn_q.weight.lora_a", "blk.29.ffn_down.weight.lora_b"} <= names
    q_a = next(t for t in header.tensors if t.name == "blk.0.attn_q.weight.lora_a")
    assert q_a.shape == (576, config["r"])  # ggml order: (in, r)


@pytest.mark.slow
def test_llama_cpp_applies_it_like_peft(
    lora_gguf: Path, smollm2_lora: Path, smollm2_hf: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_gguf = tmp_path / "f32.gguf"
    convert_hf_to_gguf(smollm2_hf, base_gguf, "f32")
    with LlamaEval(base_gguf, threads=1) as m:
        base = m.logits(IDS)
    with LlamaEval(base_gguf, threads=1, lora=lora_gguf) as m:
        adapted = m.logits(IDS)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32), smollm2_lora
    )
    with torch.no_grad():
        ref = model(torch.tensor([IDS])).logits[0].numpy()
    scale = np.abs(ref).max()
    assert np.abs(adapted - base).max() > 0.05 * scale  # the adapter changes the logits…
    assert np.abs(adapted - ref).max() < 0.01 * scale  # …exactly as PEFT does


@pytest.mark.slow
def test_verify_with_the_adapter(lora_gguf: Path, smollm2_f16: Path) -> None:
    plain = verify_gguf(smollm2_f16)
    adapted = verify_gguf(smollm2_f16, lora=lora_gguf, reference=smollm2_f16)
    assert adapted.loads and adapted.lora == str(lora_gguf)
    assert adapted.perplexity != plain.perplexity
    assert adapted.agreement is not None and adapted.agreement < 1.0


@pytest.mark.slow
def test_gguf_adapter_passes_through(lora_gguf: Path, smollm2_f16: Path) -> None:
    info = check_gguf_lora(lora_gguf, base=smollm2_f16)
    assert info.is_adapter and info.adapter_type == "lora" and info.lora_alpha == 16.0


@pytest.mark.slow
def test_gguf_adapter_checks(lora_gguf: Path, smollm2_f16: Path, minilm_f16: Path) -> None:
    with pytest.raises(LoraError, match="not a GGUF LoRA adapter"):
        check_gguf_lora(smollm2_f16)
    with pytest.raises(LoraError, match="for llama models but the base is bert"):
        check_gguf_lora(lora_gguf, base=minilm_f16)


def _folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _only_a(folder: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "adapter_model.safetensors")
    (folder / "adapter_model.safetensors").unlink()
    save_file({k: v for k, v in tensors.items() if "lora_A" in k}, folder / "adapter_model.safetensors")


def _extra_tensor(folder: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "adapter_model.safetensors")
    tensors["base_model.model.model.embed_tokens.weight"] = np.zeros((4, 4), dtype=np.float32)
    (folder / "adapter_model.safetensors").unlink()
    save_file(tensors, folder / "adapter_model.safetensors")


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (lambda f: (f / "adapter_config.json").unlink(), "no adapter_config.json"),
        (lambda f: (f / "adapter_config.json").write_text("[1, 2"), "not valid JSON"),
        (lambda f: _edit(f / "adapter_config.json", peft_type="IA3"), "only LoRA adapters"),
        (lambda f: _edit(f / "adapter_config.json", use_dora=True), "use_dora"),
        (lambda f: _edit(f / "adapter_config.json", modules_to_save=["lm_head"]), "modules_to_save"),
        (lambda f: _edit(f / "adapter_config.json", r=0), "r must be a positive integer"),
        (
            lambda f: _edit(f / "adapter_config.json", lora_alpha="big"),
            "lora_alpha must be a positive number",
        ),
        (lambda f: os.rename(f / "adapter_model.safetensors", f / "adapter_model.bin"), "pickled"),
        (_only_a, "lora_B missing"),
        (_extra_tensor, "not a lora_A/lora_B weight"),
    ],
)
def test_bad_adapter_folders(
    smollm2_lora: Path, smollm2_hf: Path, tmp_path: Path, breaker: object, message: str
) -> None:
    folder = _folder(smollm2_lora, tmp_path / "lora")
    breaker(folder)  # type: ignore[operator]
    out = tmp_path / "out.gguf"
    with pytest.raises(LoraError, match=message):
        convert_peft_lora(folder, out, base=smollm2_hf)
    assert not out.exists()


def test_wrong_base_model(smollm2_lora: Path, minilm_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(LoraError, match="wrong base model"):
        convert_peft_lora(smollm2_lora, tmp_path / "out.gguf", base=minilm_folder)


def test_base_model_is_required_when_not_local(smollm2_lora: Path, tmp_path: Path) -> None:
    with pytest.raises(LoraError, match="give the base model"):
        convert_peft_lora(smollm2_lora, tmp_path / "out.gguf")


@pytest.mark.slow
def test_shape_mismatch_is_caught(smollm2_lora: Path, tmp_path: Path, smollm2_hf: Path) -> None:
    """A base with another width: the adapter does not fit and the error says so before llama.cpp sees it."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=30,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "other")
    with pytest.raises(LoraError, match="wrong base model"):
        convert_peft_lora(smollm2_lora, tmp_path / "out.gguf", base=tmp_path / "other")
