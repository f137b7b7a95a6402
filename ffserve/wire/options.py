"""Ollama's generation options as one typed model, its fields from :data:`ffruntime.options.OPTIONS`.

Both APIs map into it: Ollama's ``options`` object as sent, OpenAI's sampling fields by name
(:func:`openai_options`). ``null`` means unset; a value of the wrong type is a 400 naming the option
(no coercion of strings or booleans into numbers); an unknown key is ignored with a warning, as Ollama
does. :meth:`Options.params` is what reaches the runtime: the options the client set, nothing else, so
that the Modelfile's PARAMETERs (and the runtime's own defaults) fill in the rest.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

from annotated_types import Interval, MaxLen
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    model_validator,
)

from ffruntime.options import OPTIONS, STOP_LEN_MAX, STOP_MAX, Option, ParamValue

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


Flag = Annotated[bool, BeforeValidator(_flag)]
_STOP = {"type": "string", "maxLength": STOP_LEN_MAX}
Stops = Annotated[
    list[Annotated[str, MaxLen(STOP_LEN_MAX)]],
    MaxLen(STOP_MAX),
    BeforeValidator(_stop),
    WithJsonSchema({"anyOf": [_STOP, {"type": "array", "items": _STOP, "maxItems": STOP_MAX}]}),
]


# Constraints before the type check, so that the JSON schema shows them as minimum/maximum.
_I, _F, _FINITE = BeforeValidator(_integer), BeforeValidator(_number), AllowInfNan(False)


def _field_type(option: Option) -> object:
    """The pydantic type of one option: its table type, range and JSON reading."""
    if option.kind is bool:
        return Flag
    if option.kind is list:
        return Stops
    interval = Interval(ge=option.low, le=option.high)
    if option.kind is int:
        return Annotated[int, interval, _I]
    return Annotated[float, interval, _FINITE, _F]


SERVER_ONLY = frozenset({"tool_choice"})


class _Options(BaseModel):
    """What every request's options share: unknown keys ignored with a warning, :meth:`params`, and ff's
    ``tool_choice``; the options themselves are the fields :data:`Options` adds from the table."""

    model_config = ConfigDict(extra="ignore", frozen=True)

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


if TYPE_CHECKING:
    Options = _Options
else:
    Options = create_model(
        "Options",
        __base__=_Options,
        __doc__="Every option Ollama documents; each one ``None`` (unset) unless the client sent it.",
        **{name: (_field_type(option) | None, None) for name, option in OPTIONS.items()},
    )


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
