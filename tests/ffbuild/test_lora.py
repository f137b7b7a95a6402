"""lora: a PEFT LoRA on SmolLM2 → GGUF adapter (llama.cpp's convert_lora_to_gguf.py) that llama.cpp applies
with the same effect as PEFT; two adapters at once as PEFT stacks them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ffbuild.stages.errors import LoraError
from ffbuild.stages.gguf_info import read_gguf_header
from ffbuild.stages.lora import check_gguf_lora, convert_peft_lora
from ffbuild.stages.verify.gguf import verify_gguf
from ffruntime.llamacpp.eval import LlamaEval

IDS = [19556, 905, 28, 614, 1462, 314, 260, 3575, 282, 4649, 47]
PROMPT = IDS[:-1]  # without the full stop, after which the model ends its answer


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
    lora_gguf: Path, smollm2_lora: Path, smollm2_hf: Path, smollm2_f32: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with LlamaEval(smollm2_f32, threads=1) as m:
        base = m.logits(IDS)
    with LlamaEval(smollm2_f32, threads=1, lora=lora_gguf) as m:
        adapted = m.logits(IDS)
        greedy = m.generate(PROMPT, 12)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32), smollm2_lora
    )
    with torch.no_grad():
        ref = model(torch.tensor([IDS])).logits[0].numpy()
        ref_greedy = model.generate(torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False)[
            0, len(PROMPT) :
        ]
    assert greedy == ref_greedy.tolist()[: len(greedy)] and len(greedy) >= 3  # the same answer as PeftModel
    scale = np.abs(ref).max()
    assert np.abs(adapted - base).max() > 0.05 * scale  # the adapter changes the logits…
    assert np.abs(adapted - ref).max() < 0.01 * scale  # …exactly as PEFT does
    assert (adapted.argmax(1) == ref.argmax(1)).all()  # greedy tokens agree with PeftModel's


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
    with pytest.raises(LoraError, match="not a readable GGUF"):
        check_gguf_lora(lora_gguf, base=lora_gguf.parent)


def _folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (lambda f: (f / "adapter_config.json").unlink(), "no adapter_config.json"),
        (lambda f: (f / "adapter_config.json").write_text("[1, 2"), "not valid JSON"),
        (lambda f: _edit(f / "adapter_config.json", peft_type="IA3"), "only LoRA adapters"),
        (lambda f: os.rename(f / "adapter_model.safetensors", f / "adapter_model.bin"), "pickled"),
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


def test_the_base_must_be_a_model_folder(smollm2_lora: Path, smollm2_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(LoraError, match="base model's Hugging Face folder"):
        convert_peft_lora(smollm2_lora, tmp_path / "out.gguf", base=smollm2_gguf)


@pytest.mark.slow
def test_converter_failure_is_a_lora_error_quoting_it(
    smollm2_lora: Path, minilm_folder: Path, tmp_path: Path
) -> None:
    """Llama projections on a BERT base: llama.cpp's converter refuses, in its own words."""
    with pytest.raises(LoraError, match=r"convert_lora_to_gguf\.py .* failed on the adapter lora"):
        convert_peft_lora(smollm2_lora, tmp_path / "out.gguf", base=minilm_folder)
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.slow
def test_two_adapters_apply_like_peft_stacked(
    lora_gguf: Path,
    smollm2_lora: Path,
    smollm2_lora_2: Path,
    smollm2_hf: Path,
    smollm2_f32: Path,
    tmp_path: Path,
) -> None:
    """Two ADAPTER lines: llama.cpp applies both (scale 1 each) as PEFT does with both merged in."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    second = tmp_path / "second.gguf"
    convert_peft_lora(smollm2_lora_2, second, base=smollm2_hf)
    with LlamaEval(smollm2_f32, threads=1, lora=[lora_gguf, second]) as m:
        ours = m.logits(IDS)
        greedy = m.generate(PROMPT, 12)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, smollm2_lora).merge_and_unload()
    model = PeftModel.from_pretrained(model, smollm2_lora_2).merge_and_unload()
    with torch.no_grad():
        ref = model(torch.tensor([IDS])).logits[0].numpy()
        ref_greedy = model.generate(torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False)[
            0, len(PROMPT) :
        ]
    assert np.abs(ours - ref).max() < 0.01 * np.abs(ref).max()
    assert greedy == ref_greedy.tolist()[: len(greedy)] and len(greedy) >= 3
