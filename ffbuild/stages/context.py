"""The build's shared types: options, progress, the files a build has, the context every stage works on
(:class:`BuildContext`, the argument of each stage module's ``run``) and the build's result.

It sits below the stage modules (each imports it; it imports none of them but for types), so a stage
never reaches up into the pipeline (:mod:`ffbuild.build`) that runs it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from ffbuild.cache import BuildCache, CacheValue, file_digest, stage_key
from ffbuild.plan import BuildPlan, Variant
from ffbuild.stages import tools
from ffbuild.stages.convert.early import Started
from ffbuild.stages.errors import StageError
from registry.artifact import ModelFiles, VariantRef
from registry.choices import QUANTIZATIONS
from registry.reference import Reference
from registry.store import Store


class FetchedKind(StrEnum):
    """What the fetch stage found (:mod:`ffbuild.stages.fetch`)."""

    GGUF = "gguf"
    ONNX = "onnx"
    HF_FOLDER = "hf-folder"
    CT2_FOLDER = "ctranslate2-folder"
    STORE = "store"


@dataclass(frozen=True)
class StoredVariant:
    """One variant of a model in the store: its index entry and its files (blob paths)."""

    ref: VariantRef
    files: ModelFiles


@dataclass(frozen=True)
class Fetched:
    """A source available on this machine."""

    kind: FetchedKind
    description: str  # for progress lines: the path, repo or reference
    path: Path | None = None  # the .gguf file or the HF folder
    reference: str | None = None  # the store reference, for STORE
    index_digest: str | None = None  # what the reference pointed at, for STORE
    variants: tuple[StoredVariant, ...] = field(default_factory=tuple)  # for STORE

    @property
    def inherited(self) -> ModelFiles | None:
        """The files of the stored model a build is FROM (its TEMPLATE, SYSTEM, PARAMETERs, MESSAGEs,
        licenses), which the Modelfile's own instructions override; None for any other source."""
        return self.variants[0].files if self.kind == FetchedKind.STORE and self.variants else None


JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]

FLOAT_TYPES: tuple[str, ...] = ("f32", "f16", "bf16")
"""Unquantized GGUF types, in the order the convert stage prefers them as the quantization source."""


class BuildError(StageError):
    """A build cannot go on (unsupported backend, refused requantization, a failed verify policy)."""


class VerifyPolicyError(BuildError):
    """A variant failed the Modelfile's VERIFY thresholds (``ff build`` exits with 3)."""


class Progress(Protocol):
    """Where the pipeline reports what it does (the CLI renders it; tests may record it)."""

    def start(self, stage: str) -> None: ...
    def step(self, stage: str, message: str) -> None: ...
    def done(self, stage: str, seconds: float, summary: str) -> None: ...


class SilentProgress:
    def start(self, stage: str) -> None:
        pass

    def step(self, stage: str, message: str) -> None:
        pass

    def done(self, stage: str, seconds: float, summary: str) -> None:
        pass


@dataclass(frozen=True)
class BuildOptions:
    allow_requantize: bool = False  # `--allow-requantize`: quantize an already quantized GGUF
    verify: bool = True  # `--no-verify` turns the verify stage off (no figures are written)
    threads: int | None = None


@dataclass(frozen=True)
class WeightFile:
    """A file going into the store as a layer, with the digest its producer computed.

    ``build_owned`` marks files the build made (cache entries, never modified in place), which may be
    hard-linked into the store; a user's own file is always copied, so editing it later cannot
    change a stored blob under its digest.
    """

    path: Path
    digest: str
    size: int
    build_owned: bool = False


@dataclass(frozen=True)
class ExtraLayer:
    """A file beside the weight (tokenizer, graph spec, TVM parameters), stored as its own layer."""

    media_type: str
    filepath: str
    file: WeightFile


class WeightInfo(Protocol):
    """What packaging needs to know of a weight (a :class:`GGUFInfo`, or a tensor graph's facts)."""

    @property
    def architecture(self) -> str: ...
    @property
    def param_count(self) -> int: ...
    @property
    def precision(self) -> str: ...


@dataclass(frozen=True)
class TensorInfo:
    architecture: str
    param_count: int
    precision: str


@dataclass
class Built:
    """One weight the build has: a GGUF conversion, a quantization, the source file or a stored
    variant; or a tensor variant's graph (ONNX, TVM library, TensorRT engine) with its extra layers."""

    quantization: str
    weight: WeightFile
    info: WeightInfo
    seconds: float = 0.0
    cached: bool = True  # False only when this build made it (a cache miss)
    adapters: tuple[WeightFile, ...] = ()  # inherited from a stored variant
    format: str = "gguf"
    weight_name: str = "model.gguf"
    extra: tuple[ExtraLayer, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def bits(self) -> float:
        q = QUANTIZATIONS.get(self.quantization)
        return float(q["bits"]) if q else 0.0


@dataclass
class VariantOutput:
    variant: Variant  # quantization resolved
    built: Built
    report: dict[str, JSONValue] | None = None
    verify_seconds: float = 0.0
    verified_now: bool = False  # the verify stage ran (not a cache hit, not skipped)
    runtime: str | None = None  # what verify ran it with, when not llama.cpp (io.ferrousforge.runtime)
    manifest: str = ""
    size: int = 0

    @property
    def did_work(self) -> bool:
        """Whether this build quantized/converted or verified this variant (False: all from the cache)."""
        return not self.built.cached or self.verified_now


@dataclass(frozen=True)
class StageTiming:
    name: str
    seconds: float
    summary: str


@dataclass
class BuildContext:
    plan: BuildPlan
    ref: Reference
    store: Store
    cache: BuildCache
    options: BuildOptions
    progress: Progress
    fetched: Fetched | None = None
    floats: dict[str, Built] = field(default_factory=dict)  # conversions by float type
    base: Built | None = None  # the highest-precision GGUF: the quantization source
    projector: Built | None = None  # a multimodal model's projector GGUF (one layer of every GGUF variant)
    outputs: list[VariantOutput] = field(default_factory=list)
    adapters: list[WeightFile] = field(default_factory=list)
    reference: Built | None = None  # the verify reference
    graphs: dict[str, Built] = field(default_factory=dict)  # tensor family: ONNX graphs by quantization
    index_digest: str = ""
    tags: list[str] = field(default_factory=list)
    timings: list[StageTiming] = field(default_factory=list)
    ahead: list[threading.Thread] = field(default_factory=list)  # work started ahead of its stage
    _warmed: set[str] = field(default_factory=set)
    listeners: list[Callable[[Built], None]] = field(default_factory=list)  # told of each weight made
    started: Started = field(default_factory=Started)  # conversions begun before the stages ran

    def made(self, built: Built) -> None:
        """A stage made ``built`` (not from the cache): later stages listening may start on it."""
        for listener in self.listeners:
            listener(built)

    def cache_key(self, stage: str, **inputs: CacheValue) -> str:
        """The cache key of a stage run: its inputs plus the versions of the tools it runs."""
        tool_versions: dict[str, CacheValue] = dict(tools.stage_tools(stage))
        return stage_key(stage, tools=tool_versions, **inputs)

    def warm_keys(self, stages: tuple[str, ...]) -> None:
        """Work out what the cache keys of ``stages`` hold besides their inputs (tool versions, the
        digest of their code: reading and parsing ff's sources) in a background thread, while this one
        waits on something else (the converter); :meth:`cache_key` then finds them made."""
        todo = tuple(s for s in stages if s not in self._warmed)
        if not todo:
            return
        self._warmed.update(todo)

        def work() -> None:
            for stage in todo:
                with contextlib.suppress(Exception):  # cache_key meets the error itself and reports it
                    tools.stage_tools(stage)

        threading.Thread(target=work, name="ff-keys", daemon=True).start()


@dataclass(frozen=True)
class BuildResult:
    reference: str
    index_digest: str
    tags: list[str]
    variants: list[VariantOutput]
    stages: list[StageTiming]
    cache_hits: int
    cache_misses: int

    def summary(self) -> dict[str, object]:
        """A JSON-able summary (what `ff build --json` prints)."""
        return {
            "reference": self.reference,
            "index": self.index_digest,
            "tags": self.tags,
            "variants": [
                {
                    "name": v.variant.name,
                    "quantization": v.variant.quantization,
                    "target": v.variant.target,
                    "backend": v.variant.backend,
                    "manifest": v.manifest,
                    "size": v.size,
                    "agreement": (v.report or {}).get("agreement"),
                    "perplexity_ratio": (v.report or {}).get("perplexity_ratio"),
                    "cosine": (v.report or {}).get("cosine"),
                    "wer": (v.report or {}).get("wer"),
                    "seconds": round(v.built.seconds + v.verify_seconds, 3),
                    "work_done": v.did_work,
                }
                for v in self.variants
            ],
            "stages": [
                {"name": s.name, "seconds": round(s.seconds, 3), "summary": s.summary} for s in self.stages
            ],
            "cache": {"hits": self.cache_hits, "misses": self.cache_misses},
        }


def as_number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def weight_file(path: Path) -> WeightFile:
    return WeightFile(path, file_digest(path), path.stat().st_size)


def cached_gguf(
    ctx: BuildContext, stage: str, key: str, make: Callable[[Path], object]
) -> tuple[WeightFile, float, bool]:
    """Run ``make(out_path)`` through the cache; return the output file, seconds spent and hit flag."""

    def produce(folder: Path) -> dict[str, CacheValue]:
        out = folder / "model.gguf"
        make(out)
        digest = file_digest(out)
        return {"digest": digest, "size": out.stat().st_size}

    start = time.perf_counter()
    entry, hit = ctx.cache.run(stage, key, produce)
    path = entry.file("model.gguf")
    digest, size = entry.meta.get("digest"), entry.meta.get("size")
    if not isinstance(digest, str) or not isinstance(size, int) or not path.is_file():
        raise BuildError(f"the {stage} cache entry {entry.path} is damaged; delete it and build again")
    return WeightFile(path, digest, size, build_owned=True), time.perf_counter() - start, hit
