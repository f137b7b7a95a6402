"""What ``POST /api/create`` asks of a model builder, and the builder's type.

ffserve never imports ffbuild (design.md §1): the server is handed a :class:`Builder` when it is made
(``create_app(builder=…)``; ``ff serve`` wires ffbuild's pipeline in, ``ffcli/serve_build.py``), as the
scheduler is handed its loader. A :class:`BuildJob` is a Modelfile as instructions — each a keyword and
its arguments, exactly as ``ffbuild.modelfile.Instruction`` holds them — so no Modelfile text is quoted
here, with the folder its relative ``FROM`` / ``ADAPTER`` paths resolve against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from registry.store import Store

Instruction = tuple[str, tuple[str, ...]]
"""A Modelfile instruction: its keyword in upper case and its arguments (``("PARAMETER", ("stop", "x"))``)."""

Status = Callable[[str], None]
"""Where a builder reports what it does, one line at a time (sent as ``{"status": …}``)."""


@dataclass(frozen=True)
class BuildJob:
    name: str  # the canonical ``name:tag`` to store the model as (local, no digest)
    instructions: tuple[Instruction, ...]
    context: Path  # relative FROM / ADAPTER paths resolve against this folder
    quantize: str | None  # a GGUF type by llama.cpp's name, lower case (registry.choices.GGUF_QUANTS)
    store: Store


class Builder(Protocol):
    """Build ``job`` into the store (blocking: the server runs it in a thread) and return the digest of
    the model's index. Errors the client caused are raised as :class:`ffserve.errors.ServeError` 4xx;
    anything else is a bug (a 500)."""

    def __call__(self, job: BuildJob, status: Status) -> str: ...
