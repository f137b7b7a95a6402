"""Ollama's generation options as one typed model (``api/types.go`` ``Options`` and ``Runner``).

Both APIs map into it: Ollama's ``options`` object as sent, OpenAI's sampling fields by name
(:func:`openai_options`). ``null`` means unset; a value of the wrong type is a 400 naming the option
(no coercion of strings or booleans into numbers); an unknown key is ignored with a warning, as Ollama
does. :meth:`Options.params` is what reaches the runtime: the options the client set, nothing else, so
that the Modelfile's PARAMETERs (and the runtime's own defaults) fill in the rest.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from annotated_types import Interval, MaxLen
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from ffruntime.runtime import ParamValue

log = logging.getLogger("ffserve")


def _number(v: object) -> object:
    if isinstance(v, bool | str):
        raise ValueError("must be a number")
    return v


def _integer(v: object) -> object:
    if isinstance(v, bool | str):
        raise ValueError("must be an integer")
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError("must be an integer")
        return int(v)  # JSON has one number type: 40.0 is 40, as Ollama reads it
    return v


def _flag(v: object) -> object:
    if v is not None and not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _stop(v: object) -> object:
    return [v] if isinstance(v, str) else v


_INT_MAX = 2**31 - 1
Flag = Annotated[bool, BeforeValidator(_flag)]
_STOP = {"type": "string", "maxLength": 4096}
Stops = Annotated[
    list[Annotated[str, MaxLen(4096)]],
    MaxLen(64),
    BeforeValidator(_stop),
    WithJsonSchema({"anyOf": [_STOP, {"type": "array", "items": _STOP, "maxItems": 64}]}),
]


# Constraints before the type check, so that the JSON schema shows them as minimum/maximum.
_I, _F, _FINITE = BeforeValidator(_integer), BeforeValidator(_number), AllowInfNan(False)
Prob = Annotated[float, Interval(ge=0, le=1), _F]


SERVER_ONLY = frozenset({"tool_choice"})


class Options(BaseModel):
    """Every option Ollama documents; each one ``None`` (unset) unless the client sent it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # runner: how the model is loaded
    numa: Flag | None = None
    num_ctx: Annotated[int, Interval(ge=1, le=1 << 24), _I] | None = None
    num_batch: Annotated[int, Interval(ge=1, le=1 << 20), _I] | None = None
    num_gpu: Annotated[int, Interval(ge=-1, le=_INT_MAX), _I] | None = None
    main_gpu: Annotated[int, Interval(ge=0, le=1024), _I] | None = None
    low_vram: Flag | None = None
    f16_kv: Flag | None = None
    logits_all: Flag | None = None
    vocab_only: Flag | None = None
    use_mmap: Flag | None = None
    use_mlock: Flag | None = None
    embedding_only: Flag | None = None
    num_thread: Annotated[int, Interval(ge=0, le=4096), _I] | None = None
    # sampling and lengths
    num_keep: Annotated[int, Interval(ge=-1, le=_INT_MAX), _I] | None = None
    seed: Annotated[int, Interval(ge=-(2**63), le=2**64 - 1), _I] | None = None
    # num_predict -1: no limit, -2: until the context is full
    num_predict: Annotated[int, Interval(ge=-2, le=_INT_MAX), _I] | None = None
    top_k: Annotated[int, Interval(ge=0, le=_INT_MAX), _I] | None = None
    top_p: Prob | None = None
    min_p: Prob | None = None
    tfs_z: Annotated[float, Interval(ge=0), _FINITE, _F] | None = None
    typical_p: Prob | None = None
    repeat_last_n: Annotated[int, Interval(ge=-1, le=_INT_MAX), _I] | None = None  # -1: num_ctx
    temperature: Annotated[float, Interval(ge=0, le=100), _FINITE, _F] | None = None
    repeat_penalty: Annotated[float, Interval(ge=0, le=100), _FINITE, _F] | None = None
    presence_penalty: Annotated[float, Interval(ge=-100, le=100), _FINITE, _F] | None = None
    frequency_penalty: Annotated[float, Interval(ge=-100, le=100), _FINITE, _F] | None = None
    mirostat: Annotated[int, Interval(ge=0, le=2), _I] | None = None
    mirostat_tau: Annotated[float, Interval(ge=0), _FINITE, _F] | None = None
    mirostat_eta: Annotated[float, Interval(ge=0), _FINITE, _F] | None = None
    penalize_newline: Flag | None = None
    stop: Stops | None = None
    # ff extension for Ollama clients, which pass only ``options`` through: /api/chat's tool_choice
    # ("auto", "none", "required" or a tool's name); never sent to the runtime.
    tool_choice: Annotated[str, MaxLen(64)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(k for k in data if k not in cls.model_fields)
            if unknown:
                log.warning("ignoring unknown options: %s", ", ".join(str(k)[:64] for k in unknown[:20]))
        return data

    def params(self) -> dict[str, ParamValue]:
        """The options the client set, typed, for ``GenerationRequest.options``."""
        out: dict[str, ParamValue] = {}
        for key, value in self:
            if value is not None and key not in SERVER_ONLY:
                out[key] = list(value) if isinstance(value, list) else value
        return out


def _nullable(schema: dict[str, Any]) -> None:
    ref = schema.pop("$ref", None)
    if ref is not None:
        schema["anyOf"] = [{"$ref": ref}, {"type": "null"}]


OptionsField = Annotated[
    Options, BeforeValidator(lambda v: {} if v is None else v), Field(json_schema_extra=_nullable)
]
"""An ``options`` object in a request body; ``null`` is no options."""


def openai_options(
    *,
    max_tokens: int | None,
    stop: str | list[str] | None,
    **sampling: float | int | None,
) -> Options:
    """OpenAI's sampling fields (same names as Ollama's) and ``max_tokens`` → :class:`Options`."""
    return Options.model_validate({**sampling, "num_predict": max_tokens, "stop": stop})
