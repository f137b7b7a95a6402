"""The build's stages, in the order they run (:data:`STAGES`); :func:`ffbuild.build.build` runs them.

Each stage is one module under ``ffbuild/stages/`` with a ``run(ctx)`` over one
:class:`~ffbuild.stages.context.BuildContext`, returning the summary line the progress shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ffbuild.stages import (
    compile,
    fetch,
    genai,
    lora,
    onnx_export,
    package,
    quantize,
    speech,
    verify,
    verify_speech,
    verify_tensor,
)
from ffbuild.stages.context import BuildContext
from ffbuild.stages.convert import stage as convert
from ffbuild.stages.convert.early import CONVERTED_FAMILIES
from registry.choices import Family


@dataclass(frozen=True)
class Stage:
    """A step of the build. ``families``: the stage sees only the variants of those families
    (``Variant.family``) in ``ctx.plan`` and is skipped when there are none; ``None``: it sees them all.
    ``ahead``: called before each earlier stage runs (with the whole plan), it may start work of this
    stage in the background whose inputs exist already (the build waits for it before it ends)."""

    name: str
    run: Callable[[BuildContext], str]
    families: tuple[Family, ...] | None = None
    ahead: Callable[[BuildContext], None] | None = None


STAGES: tuple[Stage, ...] = (
    Stage("fetch", fetch.run),
    Stage("convert", convert.run, CONVERTED_FAMILIES),
    Stage("quantize", quantize.run, ("gguf",), ahead=quantize.ahead),
    Stage("genai", genai.run, ("genai",)),
    Stage("adapters", lora.run, ("gguf",)),
    Stage("export", onnx_export.run, ("tensor",)),
    Stage("compile", compile.run, ("tensor",)),
    Stage("verify", verify.run, ("gguf", "genai"), ahead=verify.ahead),
    Stage("verify-tensor", verify_tensor.run, ("tensor",)),
    Stage("speech", speech.run, ("speech",)),
    Stage("verify-speech", verify_speech.run, ("speech",)),
    Stage("package", package.run),
)
