"""The adapters stage: PEFT LoRA folders → GGUF adapters by llama.cpp's ``convert_lora_to_gguf.py``.

A PEFT folder (``adapter_config.json`` with ``peft_type: LORA`` and ``adapter_model.safetensors``) is
converted by llama.cpp's own LoRA converter (from the same source as the model converter,
:mod:`ffbuild.stages.convert.source`), given the base model's Hugging Face folder for its config. A GGUF
LoRA given as ``ADAPTER`` passes through, checked with :func:`check_gguf_lora` against the base GGUF
(its architecture and the shape of every tensor it adapts), so a mismatch is a build error rather than a
crash at serve time. :func:`run` is the build's ``adapters`` stage: every ADAPTER of the plan, in order.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

from ffbuild.cache import folder_digest, path_digest
from ffbuild.stages.context import BuildContext, BuildError, FetchedKind, cached_gguf, weight_file
from ffbuild.stages.convert.runner import Report, run_script
from ffbuild.stages.convert.source import LORA_SCRIPT, LlamaCppSource, llama_cpp_source
from ffbuild.stages.errors import ConvertError, GGUFError, LoraError, StageError
from ffbuild.stages.gguf_info import GGUFInfo, read_gguf_header, read_gguf_info
from registry.atomic import atomic_output


def _check_peft_folder(folder: Path) -> None:
    """The checks llama.cpp's converter would fail on with a traceback, said plainly first."""
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
    if not (folder / "adapter_model.safetensors").is_file():
        extra = " (pickled adapter_model.bin is not read)" if (folder / "adapter_model.bin").exists() else ""
        raise LoraError(f"{folder} has no adapter_model.safetensors{extra}")


def convert_peft_lora(
    folder: Path, out: Path, *, base: Path, report: Report | None = None, source: LlamaCppSource | None = None
) -> GGUFInfo:
    """Convert the PEFT LoRA in ``folder`` into a GGUF adapter at ``out`` for the Hugging Face model
    folder ``base`` (only its config is read) with llama.cpp's ``convert_lora_to_gguf.py``."""
    _check_peft_folder(folder)
    if not base.is_dir() or not (base / "config.json").is_file():
        raise LoraError(
            f"a PEFT adapter converts against its base model's Hugging Face folder (config.json); {base} "
            "is not one: build FROM the model's folder, or convert the adapter to GGUF beforehand"
        )
    try:
        src = source or llama_cpp_source()
        with atomic_output(out) as tmp:
            args = [str(folder), "--base", str(base), "--outfile", str(tmp), "--outtype", "f32"]
            what = f"the adapter {folder.name}"
            run_script(src, LORA_SCRIPT, args, what=what, report=report, remove=[tmp])
    except ConvertError as e:
        raise LoraError(str(e)) from None
    return check_gguf_lora(out)


def check_gguf_lora(path: Path, *, base: Path | None = None) -> GGUFInfo:
    """Validate a GGUF LoRA adapter (and, given its base GGUF, that every tensor fits it); describe it."""
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
        try:
            base_header = read_gguf_header(base)
        except GGUFError as e:
            raise LoraError(f"the base model {base} is not a readable GGUF: {e}") from e
        arch = base_header.kv.get("general.architecture")
        if arch != info.architecture:
            raise LoraError(f"{path} is for {info.architecture} models but the base is {arch}")
        shapes = {t.name: t.shape for t in base_header.tensors if len(t.shape) == 2}
        for name, a in a_shapes.items():  # ggml order: base (in, out), a = (in, r), b = (r, out)
            expected = shapes.get(name)
            if expected is None or (a[0], b_shapes[name][1]) != expected:
                raise LoraError(f"{path}: {name} does not fit the base model {base}: wrong base model?")
    return info


def _convert(fn: Callable[..., object], adapter: Path, base: Path, ctx: BuildContext, out: Path) -> object:
    return fn(adapter, out, base=base, report=lambda msg: ctx.progress.step("adapters", msg))


def run(ctx: BuildContext) -> str:
    """The adapters stage: GGUF LoRAs are checked against the base; PEFT folders are converted (cached)."""
    if not ctx.plan.adapters:
        return "no adapters"
    if ctx.base is None:
        raise BuildError("adapters ran before convert")
    f = ctx.fetched
    folder = f.path if f is not None and f.kind == FetchedKind.HF_FOLDER and f.path else None
    for a in ctx.plan.adapters:
        ctx.progress.step("adapters", a.raw)
        if a.kind == "gguf":
            check_gguf_lora(a.path, base=ctx.base.weight.path)
            ctx.adapters.append(weight_file(a.path))
            continue
        if folder is None:
            raise BuildError(
                f"ADAPTER {a.raw}: a PEFT adapter is converted against the base model's Hugging Face folder, "
                "but FROM is not one: build FROM the model's folder, or give the adapter as a GGUF"
            )
        try:
            converter = llama_cpp_source().digest
        except StageError as exc:
            raise BuildError(str(exc)) from None
        key = ctx.cache_key(
            "lora", adapter=path_digest(a.path), base=folder_digest(folder), converter=converter
        )
        make = functools.partial(_convert, convert_peft_lora, a.path, folder, ctx)
        w, _, _ = cached_gguf(ctx, "lora", key, make)
        check_gguf_lora(w.path, base=ctx.base.weight.path)
        ctx.adapters.append(w)
    return f"{len(ctx.adapters)} adapter(s)"
