"""One ONNX Runtime GenAI model folder, opened with ff's :class:`LoadSettings`: for the runtime and verify.

:func:`open_model` reads ``genai_config.json`` through ``og.Config`` with the thread count and device
applied (so verify measures what is served), and gives the tokenizer, the model's chat template
(``chat_template.jinja`` or ``tokenizer_config.json``'s, rendered by :mod:`ffruntime.prompting`),
per-position logits and greedy decoding. Imports neither torch nor transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime_genai as og

from ffruntime.errors import BackendUnavailable, RuntimeFailure
from ffruntime.prompting import ModelfilePrompt, ModelPrompting, model_prompting
from ffruntime.settings import LoadSettings

FloatArray = npt.NDArray[np.float32]
CUDA_PACKAGE = "onnxruntime-genai-cuda"


@dataclass
class GenAIModel:
    folder: Path
    model: Any  # og.Model
    tokenizer: Any  # og.Tokenizer
    context_length: int
    vocab_size: int
    eos_ids: frozenset[int]
    tokenizer_config: dict[str, object]

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(np.asarray(tokens, dtype=np.int32)))

    def params(self, max_length: int) -> Any:
        p = og.GeneratorParams(self.model)
        p.set_search_options(max_length=max_length, do_sample=False)
        return p

    def logits(self, tokens: Sequence[int]) -> FloatArray:
        """Next-token logits after each prefix of ``tokens`` (one decoding step per token, so each row
        is what the generator sees while it decodes)."""
        gen = og.Generator(self.model, self.params(len(tokens) + 1))
        rows = []
        for t in tokens:
            gen.append_tokens(np.asarray([t], dtype=np.int32))
            rows.append(np.array(gen.get_logits(), dtype=np.float32).reshape(-1)[-self.vocab_size :])
        return np.stack(rows)

    def greedy(self, tokens: Sequence[int], n: int) -> list[int]:
        gen = og.Generator(self.model, self.params(min(self.context_length, len(tokens) + n)))
        gen.append_tokens(np.asarray(tokens, dtype=np.int32))
        out: list[int] = []
        while len(out) < n and not gen.is_done():
            gen.generate_next_token()
            t = int(gen.get_next_tokens()[0])
            if t in self.eos_ids:
                break
            out.append(t)
        return out

    def chat_template(self) -> str | None:
        path = self.folder / "chat_template.jinja"
        if path.is_file():
            return path.read_text(encoding="utf-8")
        value = self.tokenizer_config.get("chat_template")
        return value if isinstance(value, str) and value else None

    def prompting(self, modelfile: ModelfilePrompt) -> ModelPrompting:
        """The model's prompts (:mod:`ffruntime.prompting`): ``modelfile``'s TEMPLATE, SYSTEM and MESSAGEs,
        else its own chat template with the tokenizer config's BOS and EOS text."""
        special = {k: _token_text(self.tokenizer_config.get(k)) for k in ("bos_token", "eos_token")}
        return model_prompting(modelfile, self.chat_template(), **special)


def _token_text(value: object) -> str:
    if isinstance(value, dict):  # {"content": "<|im_start|>", …} in older tokenizer configs
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _read_json(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"{path} is not readable JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


def open_model(folder: Path, settings: LoadSettings) -> GenAIModel:
    """Load ``folder`` (a GenAI export) on ``settings.device`` with ``settings.n_threads`` threads."""
    genai = _read_json(folder / "genai_config.json")
    model_cfg = genai.get("model")
    if not isinstance(model_cfg, dict):
        raise RuntimeFailure(f"{folder}/genai_config.json has no model section")
    device = settings.device.split(":", 1)[0]
    if device == "cuda" and not og.is_cuda_available():
        raise BackendUnavailable(
            f"this variant runs on CUDA through ONNX Runtime GenAI, which has no CUDA provider here: "
            f"pip install {CUDA_PACKAGE} (in place of onnxruntime-genai) on a machine with an NVIDIA GPU",
            package=CUDA_PACKAGE,
        )
    threads = settings.n_threads
    try:
        cfg = og.Config(str(folder))
        cfg.clear_providers()
        if device == "cuda":
            cfg.append_provider("cuda")
        overlay = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": overlay}}}))
        model = og.Model(cfg)
        tokenizer = og.Tokenizer(model)
    except RuntimeError as exc:
        raise RuntimeFailure(f"ONNX Runtime GenAI cannot load {folder}: {exc}") from None
    eos = model_cfg.get("eos_token_id")
    eos_ids = {int(x) for x in (eos if isinstance(eos, list) else [eos]) if isinstance(x, int)}
    eos_ids |= {int(x) for x in tokenizer.eos_token_ids}
    ctx = model_cfg.get("context_length")
    vocab = model_cfg.get("vocab_size")
    return GenAIModel(
        folder=folder,
        model=model,
        tokenizer=tokenizer,
        context_length=int(ctx) if isinstance(ctx, int) else 2048,
        vocab_size=int(vocab) if isinstance(vocab, int) else 0,
        eos_ids=frozenset(eos_ids),
        tokenizer_config=_read_json(folder / "tokenizer_config.json"),
    )
