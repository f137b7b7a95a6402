"""Hugging Face encoder → ONNX, with the model's own pooling inside the graph.

The graph takes ``input_ids`` and ``attention_mask`` (INT64, dynamic batch × sequence) and returns
the sentence embedding (``embedding``: pooled as the folder's sentence-transformers ``Pooling``
module says — mean, CLS or max — and L2-normalised when it has a ``Normalize`` module) or, for a
sequence classifier, the ``logits``.

The wrapper builds the 4-D additive attention mask and the position ids (a cumulative sum) itself:
transformers 5's mask construction and the ``Range`` op for position ids are what TVM's Relax ONNX
importer cannot import (design.md §6), so one export serves onnxruntime, TVM and TensorRT alike.
Token type ids are zeros (one segment), as sentence-transformers feeds single texts.

:func:`reference_outputs` runs the same wrapper in PyTorch eager mode: the source model the verify
stage measures every variant against.

:func:`run` is the build's ``export`` stage (the tensor family): the fp32 graph — exported from the
Hugging Face folder, or the ``FROM model.onnx`` graph as it is — then the fp16/int8 graphs the variants
ask for (:mod:`ffbuild.stages.onnx_quantize`), each through the build cache. onnxruntime variants are
these graphs; the compile stage (:mod:`ffbuild.stages.compile`) builds the others from them. Each
graph's layers: the weight ``model.onnx``, ``graph.json`` (what it takes and gives) and, for text
models, the tokenizer files.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffbuild.cache import CacheValue, file_digest, folder_digest
from ffbuild.plan import Variant
from ffbuild.stages import tools
from ffbuild.stages.context import (
    BuildContext,
    BuildError,
    Built,
    FetchedKind,
    TensorInfo,
    VariantOutput,
    as_number,
)
from ffbuild.stages.errors import StageError
from ffbuild.stages.onnx_quantize import convert_fp16, graph_params, graph_signature, quantize_int8
from ffbuild.stages.tensor_layers import entry_layers, owned
from ffruntime.graph_spec import GRAPH_SPEC_FILE, TOKENIZER_FILE, GraphSpec, IOSpec

OPSET = 17
MASK_FILL = -10000.0  # the additive mask of padded positions (finite, so fp16 graphs stay finite)
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json")


class ExportError(StageError):
    """The folder cannot be exported (not an encoder, missing tokenizer, exporter failure)."""


@dataclass(frozen=True)
class Pooling:
    mode: str  # "mean", "cls" or "max"
    normalize: bool


@dataclass(frozen=True)
class ExportInfo:
    architecture: str
    param_count: int
    spec: GraphSpec


def read_pooling(folder: Path) -> Pooling:
    """The sentence-transformers pooling of ``folder`` (mean + normalize when it says nothing)."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return Pooling("mean", True)
    modules = json.loads(modules_path.read_text(encoding="utf-8"))
    types = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    mode = "mean"
    pool = types.get("Pooling")
    if pool is not None:
        cfg_path = folder / str(pool.get("path", "")) / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        if cfg.get("pooling_mode_cls_token"):
            mode = "cls"
        elif cfg.get("pooling_mode_max_tokens"):
            mode = "max"
        elif cfg.get("pooling_mode_mean_sqrt_len_tokens") or cfg.get("pooling_mode_weightedmean_tokens"):
            raise ExportError(f"{folder}: only mean, CLS and max pooling are exported")
    return Pooling(mode, "Normalize" in types)


def max_length(folder: Path, config: dict[str, Any]) -> int:
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        n = json.loads(st.read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(n, int) and n > 0:
            return n
    return int(config.get("max_position_embeddings") or 512)


def _wrapper(folder: Path, task: str) -> tuple[Any, Pooling, dict[str, Any]]:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cls = AutoModelForSequenceClassification if task == "classify" else AutoModel
    try:
        model = cls.from_pretrained(str(folder), attn_implementation="eager", dtype=torch.float32).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{folder}: transformers cannot load it as an encoder: {exc}") from None
    pooling = read_pooling(folder)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            mask = attention_mask.to(torch.float32)
            additive = (1.0 - mask[:, None, None, :]) * MASK_FILL
            positions = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1
            out = self.model(
                input_ids=input_ids,
                attention_mask=additive,
                position_ids=positions,
                token_type_ids=torch.zeros_like(input_ids),
            )
            if task == "classify":
                logits: torch.Tensor = out.logits
                return logits
            hidden = out.last_hidden_state
            if pooling.mode == "cls":
                pooled = hidden[:, 0]
            elif pooling.mode == "max":
                pooled = (hidden + (1.0 - mask[:, :, None]) * MASK_FILL).max(dim=1).values
            else:
                pooled = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
            if pooling.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            result: torch.Tensor = pooled
            return result

    return Encoder().eval(), pooling, config


def _tokenizer(folder: Path, out: Path) -> None:
    """``tokenizer.json`` (made by transformers' fast tokenizer when the folder has only a vocab)."""
    if (folder / TOKENIZER_FILE).is_file():
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, out / name)
        return
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
        tok.backend_tokenizer.save(str(out / TOKENIZER_FILE))
    except (OSError, ValueError, AttributeError) as exc:
        raise ExportError(
            f"{folder}: no {TOKENIZER_FILE}, and no fast tokenizer can be made: {exc}"
        ) from None


def export_hf(folder: Path, out: Path, task: str) -> ExportInfo:
    """Export ``folder`` to ``out/model.onnx`` (plus its tokenizer files); ``task`` embed or classify."""
    if task not in ("embed", "classify"):
        raise ExportError(f"TASK {task}: only embed and classify models are exported to ONNX from weights")
    import torch

    wrapper, _, config = _wrapper(folder, task)
    _tokenizer(folder, out)
    dummy = torch.tensor([[101, 2023, 2003, 102], [101, 2307, 102, 0]], dtype=torch.int64)
    mask = (dummy != 0).to(torch.int64)
    output = "logits" if task == "classify" else "embedding"
    with torch.no_grad():
        width = int(wrapper(dummy, mask).shape[-1])
        try:
            torch.onnx.export(
                wrapper,
                (dummy, mask),
                str(out / "model.onnx"),
                input_names=["input_ids", "attention_mask"],
                output_names=[output],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    output: {0: "batch"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
        except Exception as exc:  # the exporter raises many types
            raise ExportError(f"{folder}: torch.onnx.export failed: {type(exc).__name__}: {exc}") from None
    id2label = config.get("id2label") or {}
    labels = tuple(str(id2label.get(str(i), i)) for i in range(width)) if task == "classify" else ()
    spec = GraphSpec(
        task="classify" if task == "classify" else "embed",
        inputs=(
            IOSpec(name="input_ids", datatype="INT64", shape=(-1, -1)),
            IOSpec(name="attention_mask", datatype="INT64", shape=(-1, -1)),
        ),
        outputs=(IOSpec(name=output, datatype="FP32", shape=(-1, width)),),
        max_length=max_length(folder, config),
        labels=labels,
    )
    params = sum(int(p.numel()) for p in wrapper.parameters())
    archs = config.get("architectures") or [config.get("model_type") or "unknown"]
    return ExportInfo(str(config.get("model_type") or archs[0]), params, spec)


def reference_outputs(folder: Path, task: str, ids: Any, mask: Any) -> Any:
    """The source model's outputs in PyTorch (eager, fp32) for padded ``ids``/``mask`` (numpy)."""
    import torch

    wrapper, _, _ = _wrapper(folder, task)
    with torch.no_grad():
        return wrapper(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}


def cached_folder(
    ctx: BuildContext, stage: str, key: str, make: Callable[[Path], dict[str, CacheValue]]
) -> tuple[Path, dict[str, CacheValue], float, bool]:
    """Run ``make(folder)`` through the cache; the folder, its metadata, seconds spent and hit flag."""
    start = time.perf_counter()
    entry, hit = ctx.cache.run(stage, key, make)
    if not entry.file(GRAPH_SPEC_FILE).is_file():
        raise BuildError(f"the {stage} cache entry {entry.path} is damaged; delete it and build again")
    return entry.path, entry.meta, time.perf_counter() - start, hit


def _graph_built(quant: str, folder: Path, meta: dict[str, CacheValue], secs: float, hit: bool) -> Built:
    files = meta.get("files")
    if not isinstance(files, list):
        raise BuildError(f"the cache entry {folder} is damaged; delete it and build again")
    info = TensorInfo(
        str(meta.get("architecture") or "onnx"), int(as_number(meta.get("params"))), _PRECISION[quant]
    )
    return Built(
        quant,
        owned(folder / "model.onnx"),
        info,
        secs,
        hit,
        format="onnx",
        weight_name="model.onnx",
        extra=entry_layers(folder, [str(f) for f in files if f != "model.onnx"], set()),
    )


def _base_graph(ctx: BuildContext) -> Built:
    """The fp32 ONNX graph: exported from the HF folder, or the source graph (copied into the cache)."""
    f = ctx.fetched
    assert f is not None
    versions: dict[str, CacheValue] = dict(tools.tensor_tools())
    if f.kind == FetchedKind.HF_FOLDER:
        assert f.path is not None
        folder_src = f.path
        task = ctx.plan.task
        key = ctx.cache_key("onnx_export", source=folder_digest(folder_src), task=task, versions=versions)

        def make(out: Path) -> dict[str, CacheValue]:
            info = export_hf(folder_src, out, task)
            (out / GRAPH_SPEC_FILE).write_text(info.spec.model_dump_json(), encoding="utf-8")
            files: list[CacheValue] = [p.name for p in sorted(out.iterdir())]
            return {"architecture": info.architecture, "params": info.param_count, "files": files}

        ctx.progress.step("export", f"{f.description} → ONNX ({task})")
    elif f.kind == FetchedKind.ONNX:
        assert f.path is not None
        graph_src = f.path
        if ctx.plan.task != "tensor":
            raise BuildError(
                f"FROM {graph_src.name}: an ONNX graph is served as TASK tensor, not {ctx.plan.task}"
            )
        key = ctx.cache_key("onnx_source", source=file_digest(graph_src), versions=versions)

        def make(out: Path) -> dict[str, CacheValue]:
            spec = graph_signature(graph_src)
            shutil.copyfile(graph_src, out / "model.onnx")
            (out / GRAPH_SPEC_FILE).write_text(spec.model_dump_json(), encoding="utf-8")
            return {
                "architecture": "onnx",
                "params": graph_params(graph_src),
                "files": ["graph.json", "model.onnx"],
            }

        ctx.progress.step("export", f"{f.description}: the graph as it is")
    else:
        raise BuildError(
            f"FROM {f.description}: ONNX-family variants are built from a Hugging Face folder or a .onnx file"
        )
    folder, meta, secs, hit = cached_folder(ctx, "onnx_export", key, make)
    return _graph_built("fp32", folder, meta, secs, hit)


def _derived_graph(ctx: BuildContext, base: Built, quant: str, per_channel: bool) -> Built:
    key = ctx.cache_key(
        "onnx_quantize",
        source=base.weight.digest,
        quantization=quant,
        per_channel=per_channel,
        versions=dict(tools.tensor_tools()),
    )

    def make(out: Path) -> dict[str, CacheValue]:
        if quant == "int8":
            quantize_int8(base.weight.path, out / "model.onnx", per_channel=per_channel)
        else:
            convert_fp16(base.weight.path, out / "model.onnx")
        for x in base.extra:
            shutil.copyfile(x.file.path, out / x.filepath)
        files: list[CacheValue] = [p.name for p in sorted(out.iterdir())]
        return {"architecture": base.info.architecture, "params": base.info.param_count, "files": files}

    ctx.progress.step("export", f"fp32 → {quant}")
    folder, meta, secs, hit = cached_folder(ctx, "onnx_quantize", key, make)
    return _graph_built(quant, folder, meta, secs, hit)


def _per_channel(v: Variant) -> bool:
    return v.options.get("per_channel", "true").lower() not in ("false", "0", "no")


def _graph_name(v: Variant) -> str:
    quant = v.quantization if v.quantization != "source" else "fp32"
    return f"{quant}{'' if _per_channel(v) else '-per-tensor'}"


def run(ctx: BuildContext) -> str:
    """The export stage: ``ctx.graphs`` (the ONNX graphs by precision) and the onnxruntime outputs."""
    base = _base_graph(ctx)
    ctx.graphs["fp32"] = base
    for v in ctx.plan.variants:
        quant = v.quantization if v.quantization != "source" else "fp32"
        name = _graph_name(v)
        if name not in ctx.graphs:
            ctx.graphs[name] = _derived_graph(ctx, base, quant, _per_channel(v))
        if v.backend == "onnxruntime":
            ctx.outputs.append(VariantOutput(v.model_copy(update={"quantization": quant}), ctx.graphs[name]))
    made = sum(not b.cached for b in ctx.graphs.values())
    return f"{', '.join(ctx.graphs)}; {made} made, {len(ctx.graphs) - made} from the cache"


def graph_for(ctx: BuildContext, v: Variant) -> Built:
    """The graph the export stage made for ``v`` (what the compile stage builds it from)."""
    return ctx.graphs[_graph_name(v)]
