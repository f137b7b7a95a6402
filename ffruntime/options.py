"""Ollama's options (``api/types.go`` ``Options`` and ``Runner``) as one table, and how a runtime reads them.

Each :class:`Option` has its JSON type, the range a request may ask for, when it acts (``load``: how
the model is loaded; ``request``: each generation), whether a Modelfile ``PARAMETER`` may set it, and
whether it is deprecated (accepted and never acted on). Everything that takes options derives from
:data:`OPTIONS`: the ``PARAMETER`` parser (``ffbuild.params``), the request model
(``ffserve.wire.options``), and each text runtime's sampler settings (``ffruntime.llamacpp.sampling``,
``ffruntime.onnxruntime_genai``). :func:`model_options` applies a model's ``PARAMETER``s to a request.

Ollama has also deprecated ``mirostat``, ``mirostat_tau`` and ``mirostat_eta`` (its own engine has no
mirostat); llama.cpp samples with them, so in ff they are live options, as a ``PARAMETER`` and in a
request alike. ``numa``, ``embedding_only`` and ``tfs_z`` are still sent by clients, so requests
accept (and ignore) them, but Ollama's ``PARAMETER`` no longer knows them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeGuard

from ffruntime.runtime import ParamValue, RequestRejected

__all__ = ["OPTIONS", "Option", "ParamValue", "model_options", "number"]

Timing = Literal["load", "request"]

INT32_MAX: Final = 2**31 - 1
STOP_MAX: Final = 64  # stop strings a request may give
STOP_LEN_MAX: Final = 4096  # characters in one stop string


@dataclass(frozen=True)
class Option:
    """One option. ``low``/``high``: the range a request may set (None: unbounded; a ``PARAMETER`` is
    only typed, as Ollama reads it); ``choices``: the only meaningful values, wherever they come from;
    ``neutral``: the value at which this sampling stage changes nothing (a runtime without the stage
    accepts that value only)."""

    name: str
    timing: Timing
    kind: type[object]  # int, float, bool, or list (of strings: stop)
    low: int | float | None = None
    high: int | float | None = None
    choices: tuple[int, ...] = ()
    neutral: int | float | None = None
    parameter: bool = True  # a Modelfile PARAMETER may set it
    deprecated: bool = False  # accepted and ignored; a PARAMETER is dropped with a warning, as in Ollama

    def describe(self) -> str:
        """What a value must be, for messages."""
        if self.choices:
            *first, last = (str(c) for c in self.choices)
            return f"{', '.join(first)} or {last}"
        return _KIND_NAMES[self.kind]


_KIND_NAMES: Final[dict[type[object], str]] = {
    int: "an integer", float: "a number", bool: "true or false", list: "a list of strings"
}


_TABLE: Final = (
    # runner: how the model is loaded
    Option("numa", "load", bool, parameter=False),
    Option("num_ctx", "load", int, 1, 1 << 24),
    Option("num_batch", "load", int, 1, 1 << 20),
    Option("num_gpu", "load", int, -1, INT32_MAX),
    Option("main_gpu", "load", int, 0, 1024),
    Option("low_vram", "load", bool, deprecated=True),
    Option("f16_kv", "load", bool, deprecated=True),
    Option("logits_all", "load", bool, deprecated=True),
    Option("vocab_only", "load", bool, deprecated=True),
    Option("use_mmap", "load", bool),
    Option("use_mlock", "load", bool, deprecated=True),
    Option("embedding_only", "load", bool, parameter=False),
    Option("num_thread", "load", int, 0, 4096),
    # sampling and lengths
    Option("num_keep", "request", int, -1, INT32_MAX),
    Option("seed", "request", int, -(2**63), 2**64 - 1),  # < 0: a random seed
    Option("num_predict", "request", int, -2, INT32_MAX),  # -1: no limit, -2: until the context is full
    Option("top_k", "request", int, 0, INT32_MAX, neutral=0),
    Option("top_p", "request", float, 0, 1, neutral=1),
    Option("min_p", "request", float, 0, 1, neutral=0),
    Option("tfs_z", "request", float, 0, parameter=False),
    Option("typical_p", "request", float, 0, 1, neutral=1),
    Option("repeat_last_n", "request", int, -1, INT32_MAX),  # -1: num_ctx
    Option("temperature", "request", float, 0, 100),  # 0: greedy
    Option("repeat_penalty", "request", float, 0, 100, neutral=1),
    Option("presence_penalty", "request", float, -100, 100, neutral=0),
    Option("frequency_penalty", "request", float, -100, 100, neutral=0),
    Option("mirostat", "request", int, 0, 2, choices=(0, 1, 2), neutral=0),  # 1, 2: mirostat v1, v2
    Option("mirostat_tau", "request", float, 0),
    Option("mirostat_eta", "request", float, 0),
    Option("penalize_newline", "request", bool, deprecated=True),
    Option("stop", "request", list, 0, STOP_MAX),  # accumulates over PARAMETER lines
)

OPTIONS: Final[Mapping[str, Option]] = {o.name: o for o in _TABLE}


def number(name: str, value: ParamValue) -> int | float:
    """A numeric option as a runtime reads it (request ∪ ``PARAMETER``), typed as :data:`OPTIONS` says;
    :class:`RequestRejected` for a value of another type, not finite, or not one of its choices."""
    option = OPTIONS[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or (option.kind is int and value != int(value))
    ):
        raise RequestRejected(f"option {name} must be {_KIND_NAMES[option.kind]}")
    typed = int(value) if option.kind is int else float(value)
    if option.choices and typed not in option.choices:
        raise RequestRejected(f"option {name} must be {option.describe()}")
    return typed


def is_param(value: object) -> TypeGuard[ParamValue]:
    if isinstance(value, list):
        return all(isinstance(x, str) for x in value)
    return isinstance(value, str | int | float | bool)


def model_options(params: Mapping[str, object], overrides: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
    """A request's options: the artifact's Modelfile ``PARAMETER``s (its ``params.json``), each overridden
    by the request's own (a request's ``stop`` replaces the Modelfile's list). The one place they meet:
    ``ff serve`` and ``ff run`` both call it."""
    return {**{k: v for k, v in params.items() if is_param(v)}, **overrides}
