"""The adapter stage: a PEFT LoRA folder → a GGUF LoRA adapter llama.cpp applies to its base model.

A PEFT folder holds ``adapter_config.json`` (``peft_type: LORA``, ``r``, ``lora_alpha``…) and
``adapter_model.safetensors`` with ``base_model.model.<module>.lora_A.weight`` (r × in) and
``….lora_B.weight`` (out × r) per adapted module. The GGUF adapter llama.cpp reads has
``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha`` and, per module, the base
tensor's GGUF name + ``.lora_a`` / ``.lora_b``. For llama-style rope the rows of ``lora_b`` of Q and K
are permuted exactly like the base weights (W = B·A, so permuting W's rows permutes B's).

The base model (a Hugging Face folder or a GGUF) gives the architecture, head counts and the shapes
every adapted tensor must match; a mismatch is an error here rather than a crash at serve time.
A GGUF LoRA given as ``ADAPTER`` is validated with :func:`check_gguf_lora` and used as it is.
:func:`run` is the build's ``adapters`` stage: every ADAPTER of the plan, converted through the cache.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ffbuild.cache import folder_digest, path_digest
from ffbuild.stages.context import BuildContext, BuildError, FetchedKind, cached_gguf, weight_file
from ffbuild.stages.convert.architectures import (
    ARCHITECTURES,
    Architecture,
    HFConfig,
    architecture_for,
    permute_qk,
)
from ffbuild.stages.convert.safetensors_reader import BF16, SafetensorsFolder
from ffbuild.stages.errors import ConvertError, GGUFError, LoraError
from ffbuild.stages.gguf_info import GGUFInfo, read_gguf_header, read_gguf_info
from registry.atomic import atomic_output

_PREFIX = "base_model.model."
_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True)
class BaseModelShape:
    """What a LoRA must agree with: the base's architecture, head counts and weight shapes."""

    arch: Architecture
    n_blocks: int
    n_head: int
    n_kv: int
    shapes: dict[str, tuple[int, int]]  # GGUF tensor name → (out, in) for 2-D weights


def _arch_by_gguf_name(name: str) -> Architecture:
    for arch in ARCHITECTURES:
        if arch.name == name:
            return arch
    known = ", ".join(sorted({a.name for a in ARCHITECTURES}))
    raise LoraError(f"LoRA adapters are converted for base architectures {known}, not {name!r}")


def base_model_shape(base: Path) -> BaseModelShape:
    """Read the base model (a Hugging Face folder or a .gguf file) without loading its weights."""
    if base.is_dir():
        try:
            cfg = HFConfig.read(base)
            arch = architecture_for(cfg)
            n_head = cfg.int("num_attention_heads")
            with SafetensorsFolder(base) as st:
                name_map = gguf.get_tensor_name_map(arch.gguf_arch, cfg.int("num_hidden_layers"))
                shapes = {}
                for hf_name, ref in st.tensors.items():
                    gname = name_map.get_name(
                        hf_name.removeprefix("bert."), try_suffixes=(".weight", ".bias")
                    )
                    if gname and len(ref.shape) == 2:
                        shapes[gname] = (ref.shape[0], ref.shape[1])
            return BaseModelShape(
                arch,
                cfg.int("num_hidden_layers"),
                n_head,
                cfg.int("num_key_value_heads", default=n_head),
                shapes,
            )
        except ConvertError as e:
            raise LoraError(f"cannot read the base model {base}: {e}") from e
    try:
        header = read_gguf_header(base)
    except GGUFError as e:
        raise LoraError(
            f"the base model {base} is neither a Hugging Face folder nor a readable GGUF: {e}"
        ) from e
    kv = header.kv
    arch = _arch_by_gguf_name(str(kv.get("general.architecture")))
    heads = kv.get(f"{arch.name}.attention.head_count")
    kv_heads = kv.get(f"{arch.name}.attention.head_count_kv", heads)
    blocks = kv.get(f"{arch.name}.block_count")
    if not (isinstance(heads, int) and isinstance(kv_heads, int) and isinstance(blocks, int)):
        raise LoraError(f"{base}: the GGUF lacks head and block counts for {arch.name}")
    shapes = {t.name: (t.shape[1], t.shape[0]) for t in header.tensors if len(t.shape) == 2}
    return BaseModelShape(arch, blocks, heads, kv_heads, shapes)


def _read_adapter_config(folder: Path) -> dict[str, Any]:
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise LoraError(f"{folder} is not a PEFT adapter folder: it has no adapter_config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LoraError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise LoraError(f"{path}: expected a JSON object")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise LoraError(f"{path}: peft_type is {config.get('peft_type')!r}; only LoRA adapters are supported")
    for key in ("use_dora", "fan_in_fan_out", "lora_bias", "alpha_pattern"):
        if config.get(key):
            raise LoraError(f"{path}: {key}=true adapters are not supported by llama.cpp")
    if config.get("modules_to_save"):
        raise LoraError(
            f"{path}: modules_to_save {config['modules_to_save']} (fully trained modules) cannot be "
            "expressed as a LoRA; merge the adapter into the model instead"
        )
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise LoraError(f"{path}: r must be a positive integer, got {r!r}")
    if (
        not isinstance(alpha, int | float)
        or isinstance(alpha, bool)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise LoraError(f"{path}: lora_alpha must be a positive number, got {alpha!r}")
    return config


def _resolve_base(folder: Path, config: dict[str, Any], base: Path | None) -> Path:
    if base is not None:
        return base
    named = config.get("base_model_name_or_path")
    if isinstance(named, str) and named and Path(named).exists():
        return Path(named)
    raise LoraError(
        f"{folder}: give the base model (a Hugging Face folder or GGUF) to convert this adapter; "
        f"its adapter_config.json names {named!r}, which is not a local path"
    )


def _as_f32(a: np.ndarray[Any, Any], dtype: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    if dtype == BF16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def convert_peft_lora(
    folder: Path, out: Path, *, base: Path | None = None, name: str | None = None
) -> GGUFInfo:
    """Convert the PEFT LoRA in ``folder`` into a GGUF adapter at ``out`` for the model ``base``."""
    config = _read_adapter_config(folder)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        extra = " (pickled adapter_model.bin is not read)" if (folder / "adapter_model.bin").exists() else ""
        raise LoraError(f"{folder} has no adapter_model.safetensors{extra}")
    shape = base_model_shape(_resolve_base(folder, config, base))
    rank = int(config["r"])
    alpha = float(config["lora_alpha"])
    if config.get("use_rslora"):  # rsLoRA scales by alpha/sqrt(r); llama.cpp by alpha/r
        alpha *= math.sqrt(rank)
    name_map = gguf.get_tensor_name_map(shape.arch.gguf_arch, shape.n_blocks)
    try:
        st = SafetensorsFolder(folder, [weights])
    except ConvertError as e:
        raise LoraError(str(e)) from e
    with st:
        pairs: dict[str, dict[str, str]] = {}
        for tname in st.tensors:
            stem = tname.removeprefix(_PREFIX)
            if stem.endswith(_A):
                pairs.setdefault(stem.removesuffix(_A), {})["a"] = tname
            elif stem.endswith(_B):
                pairs.setdefault(stem.removesuffix(_B), {})["b"] = tname
            else:
                raise LoraError(
                    f"{weights}: tensor {tname!r} is not a lora_A/lora_B weight "
                    "(adapters that train embeddings or other full tensors are not supported)"
                )
        if not pairs:
            raise LoraError(f"{weights} holds no LoRA tensors")
        planned: list[tuple[str, str, str, bool]] = []  # gguf base name, A name, B name, permute rows of B
        for module, ab in sorted(pairs.items()):
            if set(ab) != {"a", "b"}:
                raise LoraError(f"{weights}: module {module} has lora_{'B' if 'a' in ab else 'A'} missing")
            gname = name_map.get_name(module + ".weight", try_suffixes=(".weight",))
            if gname is None:
                raise LoraError(
                    f"{weights}: module {module} has no counterpart in a GGUF {shape.arch.name} model"
                )
            ra, rb = st.tensors[ab["a"]], st.tensors[ab["b"]]
            if len(ra.shape) != 2 or len(rb.shape) != 2 or ra.shape[0] != rb.shape[1]:
                raise LoraError(
                    f"{weights}: {module} has lora_A {ra.shape} and lora_B {rb.shape}, not (r, in), (out, r)"
                )
            expected = shape.shapes.get(gname)
            if expected is None:
                raise LoraError(f"{weights}: the base model has no 2-D tensor {gname} for module {module}")
            if (rb.shape[0], ra.shape[1]) != expected:
                raise LoraError(
                    f"{weights}: {module} adapts a {rb.shape[0]}x{ra.shape[1]} weight but the base "
                    f"model's {gname} is {expected[0]}x{expected[1]}: wrong base model?"
                )
            planned.append(
                (gname, ab["a"], ab["b"], shape.arch.permute_qk and module.endswith(("q_proj", "k_proj")))
            )
        writer = gguf.GGUFWriter(None, shape.arch.name)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_name(name if name is not None else folder.resolve().name)
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for gname, a_name, b_name, permute in planned:
            a = _as_f32(st.load(a_name), st.tensors[a_name].dtype)
            b: np.ndarray[Any, Any] = _as_f32(st.load(b_name), st.tensors[b_name].dtype)
            if permute:
                b = permute_qk(b, shape.n_head if ".attn_q." in gname else shape.n_kv)
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                raise LoraError(f"{weights}: the adapter for {gname} has non-finite values")
            writer.add_tensor(gname + ".lora_a", np.ascontiguousarray(a))
            writer.add_tensor(gname + ".lora_b", np.ascontiguousarray(b))
        with atomic_output(out) as tmp:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    return check_gguf_lora(out)


def check_gguf_lora(path: Path, *, base: Path | None = None) -> GGUFInfo:
    """Validate a GGUF LoRA adapter (and, given its base, that every tensor fits it); describe it."""
    try:
        header = read_gguf_header(path)
        info = read_gguf_info(path)
    except GGUFError as e:
        raise LoraError(f"{path} is not a usable GGUF adapter: {e}") from e
    if not info.is_adapter or info.adapter_type != "lora":
        raise LoraError(
            f"{path} is not a GGUF LoRA adapter (general.type={header.kv.get('general.type')!r}, "
            f"adapter.type={info.adapter_type!r})"
        )
    if info.lora_alpha is None:
        raise LoraError(f"{path}: the adapter has no adapter.lora.alpha")
    a_shapes = {t.name.removesuffix(".lora_a"): t.shape for t in header.tensors if t.name.endswith(".lora_a")}
    b_shapes = {t.name.removesuffix(".lora_b"): t.shape for t in header.tensors if t.name.endswith(".lora_b")}
    others = [t.name for t in header.tensors if not t.name.endswith((".lora_a", ".lora_b"))]
    if others or set(a_shapes) != set(b_shapes) or not a_shapes:
        raise LoraError(
            f"{path}: tensors must come in .lora_a/.lora_b pairs (unpaired or other: "
            f"{sorted(set(a_shapes) ^ set(b_shapes)) + others})"
        )
    if base is not None:
        shape = base_model_shape(base)
        if shape.arch.name != info.architecture:
            raise LoraError(f"{path} is for {info.architecture} models but the base is {shape.arch.name}")
        for name, a in a_shapes.items():  # ggml order: a = (in, r), b = (r, out)
            expected = shape.shapes.get(name)
            if expected is None or (b_shapes[name][1], a[0]) != expected:
                raise LoraError(f"{path}: {name} does not fit the base model {base}")
    return info


def _run_convert_lora(fn: Callable[..., object], adapter: Path, base: Path | None, out: Path) -> object:
    return fn(adapter, out, base=base)


def run(ctx: BuildContext) -> str:
    """The adapters stage: GGUF LoRAs are checked against the base; PEFT folders are converted (cached)."""
    if not ctx.plan.adapters:
        return "no adapters"
    if ctx.base is None:
        raise BuildError("adapters ran before convert")
    f = ctx.fetched
    base = f.path if f is not None and f.kind == FetchedKind.HF_FOLDER and f.path else ctx.base.weight.path
    base_digest = folder_digest(base) if base.is_dir() else ctx.base.weight.digest
    for a in ctx.plan.adapters:
        ctx.progress.step("adapters", a.raw)
        if a.kind == "gguf":
            check_gguf_lora(a.path, base=ctx.base.weight.path)
            ctx.adapters.append(weight_file(a.path))
            continue
        key = ctx.cache_key("lora", adapter=path_digest(a.path), base=base_digest)
        w, _, _ = cached_gguf(
            ctx, "lora", key, functools.partial(_run_convert_lora, convert_peft_lora, a.path, base)
        )
        ctx.adapters.append(w)
    return f"{len(ctx.adapters)} adapter(s)"
