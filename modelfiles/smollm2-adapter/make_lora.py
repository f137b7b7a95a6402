"""Write ./lora: an untrained, seeded random rank-2 PEFT LoRA for SmolLM2-135M-Instruct.

It adapts q_proj and v_proj of the 30 decoder layers (hidden size 576, 3 KV heads of 64 → v_proj
out 192). lora_A is drawn like PEFT's default init (uniform in ±1/sqrt(in)); lora_B is small noise
instead of PEFT's zeros, so applying the adapter changes the outputs a little and a test can tell.
The output is deterministic: run it again and the files are byte for byte the same.

    python modelfiles/smollm2-adapter/make_lora.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent
LAYERS, HIDDEN, KV_OUT, RANK, ALPHA = 30, 576, 192, 2, 4


def main() -> None:
    rng = np.random.default_rng(20250101)
    tensors: dict[str, np.ndarray] = {}
    bound = 1.0 / np.sqrt(HIDDEN)
    for layer in range(LAYERS):
        for module, out in (("q_proj", HIDDEN), ("v_proj", KV_OUT)):
            name = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{name}.lora_A.weight"] = rng.uniform(-bound, bound, (RANK, HIDDEN)).astype(np.float16)
            tensors[f"{name}.lora_B.weight"] = (rng.standard_normal((out, RANK)) * 0.01).astype(np.float16)
    folder = HERE / "lora"
    folder.mkdir(exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
