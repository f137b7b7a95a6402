"""llama.cpp's converter started as soon as the plan is known, before the build's stages run.

The converter (a Python process importing torch and transformers, then writing every tensor) is most of
a cold build of a Hugging Face folder, and it needs nothing the stages before it make: ``ff build``
calls :func:`start_early` right after planning, before it imports the stage modules, so the
converter runs while the rest of ff loads. The convert stage then :meth:`Started.take` s the
conversion it would have started itself (the same folder, type and name, so the same process), or
starts its own; what the stage does not take is stopped when the build ends (:meth:`Started.cancel`).
This module imports only what starting the converter needs (not the stages, not gguf or numpy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ffbuild.cache import BuildCache
from ffbuild.plan import BuildPlan, SourceKind, Variant
from ffbuild.stages.convert import OUTTYPES, Conversion, default_model_name, start_conversion
from ffbuild.stages.convert.source import LlamaCppSource, llama_cpp_source
from ffbuild.stages.errors import StageError
from registry.choices import Family

CONVERTED_FAMILIES: tuple[Family, ...] = ("gguf", "genai")
"""The variant families the convert stage serves (genai: the GGUF conversion is verify's reference)."""

_Key = tuple[Path, str, str, bool]  # folder, outtype, general.name, projector


def requested_floats(variants: tuple[Variant, ...]) -> list[str]:
    """The float types the convert stage converts to for ``variants`` (f16 when they ask for none)."""
    return [q for q in OUTTYPES if any(v.quantization == q for v in variants)] or ["f16"]


@dataclass
class Started:
    """Conversions begun before the build's stages ran, by what they convert."""

    conversions: dict[_Key, Conversion] = field(default_factory=dict)

    def take(self, folder: Path, outtype: str, name: str, *, mmproj: bool) -> Conversion | None:
        """The conversion of exactly this, if one was started (the caller then owns it)."""
        return self.conversions.pop((folder.resolve(), outtype, name, mmproj), None)

    def cancel(self) -> None:
        """Stop every conversion nobody took."""
        while self.conversions:
            self.conversions.popitem()[1].cancel()


def start_early(plan: BuildPlan, cache: BuildCache, source: LlamaCppSource | None = None) -> Started:
    """Start the first conversion the convert stage will ask for, when the plan's source is a local
    Hugging Face folder this cache has not seen as it is (:meth:`BuildCache.knows_folder`); nothing
    otherwise, or when the folder or the converter is not usable (the stage then meets the same error,
    in its turn)."""
    started = Started()
    variants = tuple(v for v in plan.variants if v.family in CONVERTED_FAMILIES)
    folder = plan.source.path
    if plan.source.kind != SourceKind.HF_FOLDER or folder is None or not variants:
        return started
    if cache.knows_folder(folder):
        return started  # built before: the convert stage knows its key at once, and converts only on a miss
    outtype, name = requested_floats(variants)[0], default_model_name(folder)
    scratch = cache.scratch("convert")
    try:
        conversion = start_conversion(
            folder, outtype, name=name, source=source or llama_cpp_source(), scratch=scratch
        )
    except (StageError, OSError):
        return started  # start_conversion removed the scratch folder
    started.conversions[(folder.resolve(), outtype, name, False)] = conversion
    return started
