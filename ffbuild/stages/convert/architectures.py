"""The model families the converter knows: config.json → GGUF hyper-parameters and tensor names.

One :class:`Architecture` row per family says which GGUF architecture it becomes, which Hugging Face
tensors to drop or rename, whether Q/K rows are permuted for llama.cpp's rope layout, and how its
hyper-parameters are written. Add a family by adding a row to :data:`ARCHITECTURES`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import gguf
import numpy as np
import numpy.typing as npt

from ffbuild.stages.errors import ConvertError, UnsupportedArchitectureError

JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]


class HFConfig:
    """A model's ``config.json``, with typed getters that fail with the key's name."""

    def __init__(self, data: Mapping[str, JSONValue], path: Path) -> None:
        self.data = dict(data)
        self.path = path

    @classmethod
    def read(cls, folder: Path) -> HFConfig:
        path = folder / "config.json"
        if not path.is_file():
            raise ConvertError(f"{folder} is not a Hugging Face model folder: it has no config.json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConvertError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ConvertError(f"{path}: expected a JSON object")
        return cls(data, path)

    def int(self, *keys: str, default: int | None = None) -> int:
        for key in keys:
            v = self.data.get(key)
            if v is not None:
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    raise ConvertError(f"{self.path}: {key} must be a positive integer, got {v!r}")
                return v
        if default is None:
            raise ConvertError(f"{self.path}: missing {' or '.join(keys)}")
        return default

    def float(self, *keys: str, default: float | None = None) -> float:
        for key in keys:
            v = self.data.get(key)
            if v is not None:
                if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                    raise ConvertError(f"{self.path}: {key} must be a number, got {v!r}")
                return float(v)
        if default is None:
            raise ConvertError(f"{self.path}: missing {' or '.join(keys)}")
        return default

    def rope(self) -> dict[str, JSONValue]:
        """Rope settings from ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling``."""
        out: dict[str, JSONValue] = {}
        for key in ("rope_scaling", "rope_parameters"):
            v = self.data.get(key)
            if isinstance(v, dict):
                out.update(v)
        if "rope_theta" not in out and self.data.get("rope_theta") is not None:
            out["rope_theta"] = self.data["rope_theta"]
        if "rope_type" not in out and "type" in out:
            out["rope_type"] = out["type"]
        return out

    @property
    def architectures(self) -> list[str]:
        v = self.data.get("architectures")
        return [a for a in v if isinstance(a, str)] if isinstance(v, list) else []


Array = npt.NDArray[np.generic]
HParamWriter = Callable[[gguf.GGUFWriter, HFConfig, Path], None]


@dataclass(frozen=True)
class Architecture:
    gguf_arch: gguf.MODEL_ARCH
    hf_names: tuple[str, ...]
    vocab: str  # "decoder": SentencePiece or BPE by the files present; "wordpiece": BERT
    permute_qk: bool  # llama-style rope: un-interleave Q/K rows as llama.cpp expects
    write_hparams: HParamWriter
    strip_prefixes: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()  # tensor-name suffixes that never go into the GGUF
    drop_exact: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]


def permute_qk(w: Array, n_head: int) -> Array:
    """Reorder each head's rows from Hugging Face's half-split rope layout to llama.cpp's interleaved one."""
    if w.shape[0] % (2 * n_head):
        raise ConvertError(f"cannot permute a tensor of shape {w.shape} for {n_head} heads")
    return np.ascontiguousarray(
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _head_dim(cfg: HFConfig) -> int:
    n_head = cfg.int("num_attention_heads")
    hidden = cfg.int("hidden_size")
    if "head_dim" in cfg.data and cfg.data["head_dim"] is not None:
        return cfg.int("head_dim")
    if hidden % n_head:
        raise ConvertError(
            f"{cfg.path}: hidden_size {hidden} is not a multiple of num_attention_heads {n_head}"
        )
    return hidden // n_head


def _decoder_hparams(w: gguf.GGUFWriter, cfg: HFConfig) -> None:
    n_head = cfg.int("num_attention_heads")
    w.add_block_count(cfg.int("num_hidden_layers"))
    w.add_context_length(cfg.int("max_position_embeddings", default=4096))
    w.add_embedding_length(cfg.int("hidden_size"))
    w.add_feed_forward_length(cfg.int("intermediate_size"))
    w.add_head_count(n_head)
    w.add_head_count_kv(cfg.int("num_key_value_heads", default=n_head))
    rope = cfg.rope()
    w.add_rope_freq_base(float(_num(rope.get("rope_theta"), 10000.0)))
    w.add_layer_norm_rms_eps(cfg.float("rms_norm_eps", default=1e-6))
    if "head_dim" in cfg.data and cfg.data["head_dim"] is not None:
        w.add_key_length(cfg.int("head_dim"))
        w.add_value_length(cfg.int("head_dim"))
    rope_type = str(rope.get("rope_type") or "default").lower()
    factor = rope.get("factor")
    if rope_type == "linear" and isinstance(factor, int | float):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(factor))
    elif rope_type == "yarn" and isinstance(factor, int | float):
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(factor))
        orig = rope.get("original_max_position_embeddings")
        if isinstance(orig, int):
            w.add_rope_scaling_orig_ctx_len(orig)
    elif rope_type not in ("default", "llama3"):
        raise ConvertError(f"{cfg.path}: rope type {rope_type!r} is not supported by the converter")


def _num(v: JSONValue | None, default: float) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else default


def _llama_hparams(w: gguf.GGUFWriter, cfg: HFConfig, folder: Path) -> None:
    _decoder_hparams(w, cfg)
    w.add_vocab_size(cfg.int("vocab_size"))
    w.add_rope_dimension_count(_head_dim(cfg))


def _qwen2_hparams(w: gguf.GGUFWriter, cfg: HFConfig, folder: Path) -> None:
    _decoder_hparams(w, cfg)


def pooling_type(folder: Path) -> gguf.PoolingType | None:
    """The sentence-transformers pooling of the folder (modules.json → */config.json), if any."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return None
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        pooling_dir = next(str(m["path"]) for m in modules if str(m.get("type", "")).endswith("Pooling"))
    except StopIteration:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConvertError(f"{modules_path}: not a valid sentence-transformers modules.json ({e})") from e
    # judged by name, not by resolving: Hub cache snapshots are symlinks into a blobs folder
    relative = PurePosixPath(pooling_dir.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise ConvertError(f"{modules_path}: pooling path {pooling_dir!r} leaves the model folder")
    pooling_config = folder / relative / "config.json"
    try:
        pooling = json.loads(pooling_config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConvertError(f"{pooling_config}: cannot read the pooling config ({e})") from e
    if pooling.get("pooling_mode_mean_tokens"):
        return gguf.PoolingType.MEAN
    if pooling.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    if pooling.get("pooling_mode_lasttoken"):
        return gguf.PoolingType.LAST
    mode = pooling.get("pooling_mode")
    by_name = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "lasttoken": gguf.PoolingType.LAST}
    if mode in by_name:
        return by_name[mode]
    raise ConvertError(f"{pooling_config}: only mean, cls and last-token pooling are supported by llama.cpp")


def _bert_hparams(w: gguf.GGUFWriter, cfg: HFConfig, folder: Path) -> None:
    w.add_block_count(cfg.int("num_hidden_layers"))
    w.add_context_length(cfg.int("max_position_embeddings"))
    w.add_embedding_length(cfg.int("hidden_size"))
    w.add_feed_forward_length(cfg.int("intermediate_size"))
    w.add_head_count(cfg.int("num_attention_heads"))
    w.add_layer_norm_eps(cfg.float("layer_norm_eps", default=1e-12))
    w.add_causal_attention(False)
    pooling = pooling_type(folder)
    if pooling is not None:
        w.add_pooling_type(pooling)


_DECODER_DROP = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        gguf.MODEL_ARCH.LLAMA,
        ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM"),
        vocab="decoder",
        permute_qk=True,
        write_hparams=_llama_hparams,
        drop=_DECODER_DROP,
    ),
    Architecture(
        gguf.MODEL_ARCH.QWEN2,
        ("Qwen2ForCausalLM",),
        vocab="decoder",
        permute_qk=False,  # llama.cpp runs qwen2 with NEOX rope, which matches Hugging Face's layout
        write_hparams=_qwen2_hparams,
        drop=_DECODER_DROP,
    ),
    Architecture(
        gguf.MODEL_ARCH.BERT,
        ("BertModel", "BertForMaskedLM"),
        vocab="wordpiece",
        permute_qk=False,
        write_hparams=_bert_hparams,
        strip_prefixes=("bert.",),
        drop_exact=("embeddings.position_ids",),
        drop=("pooler.dense.weight", "pooler.dense.bias"),
    ),
)

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(sorted(n for a in ARCHITECTURES for n in a.hf_names))


def architecture_for(cfg: HFConfig) -> Architecture:
    """The row for the folder's ``architectures[0]``; anything else is an UnsupportedArchitectureError."""
    names = cfg.architectures
    if not names:
        raise ConvertError(f"{cfg.path}: no 'architectures' list; cannot tell what model this is")
    for arch in ARCHITECTURES:
        if names[0] in arch.hf_names:
            return arch
    raise UnsupportedArchitectureError(names[0], SUPPORTED_ARCHITECTURES)


def llama3_rope_factors(cfg: HFConfig) -> npt.NDArray[np.float32] | None:
    """The ``rope_freqs`` tensor llama.cpp needs for Llama 3.1-style rope scaling, else None."""
    rope = cfg.rope()
    if str(rope.get("rope_type") or "").lower() != "llama3":
        return None
    base = _num(rope.get("rope_theta"), 10000.0)
    dim = _head_dim(cfg)
    factor = _num(rope.get("factor"), 8.0)
    low = _num(rope.get("low_freq_factor"), 1.0)
    high = _num(rope.get("high_freq_factor"), 4.0)
    old_ctx = _num(rope.get("original_max_position_embeddings"), 8192.0)
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low) if high != low else np.zeros_like(wavelen)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, mid))
    return out.astype(np.float32)
