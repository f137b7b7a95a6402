"""Ollama API request bodies (https://github.com/ollama/ollama/blob/main/docs/api.md)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from ffserve.settings import parse_duration
from ffserve.wire.options import Options, OptionsField
from ffserve.wire.tools import NAME, Tools

KEEP_ALIVE_FOREVER_AFTER = 10 * 365 * 24 * 3600.0
"""A keep_alive longer than ten years means forever (and keeps expiry times representable)."""
FormatField = Literal["", "json"] | dict[str, object] | None
_DURATION: dict[str, object] = {
    "anyOf": [{"type": "number"}, {"type": "string", "examples": ["5m", "1h30m", "-1"]}, {"type": "null"}]
}


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _ModelReq(_Req):
    model: str = Field(min_length=1, max_length=512)
    keep_alive: Annotated[float | None, WithJsonSchema(_DURATION)] = None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _ka(cls, v: object) -> object:
        if isinstance(v, str):
            return parse_duration(v)
        return v

    @field_validator("keep_alive")
    @classmethod
    def _ka_bounds(cls, v: float | None) -> float | None:
        if v is None:
            return None
        if not math.isfinite(v):
            raise ValueError("keep_alive must be a finite duration (a negative one keeps the model loaded)")
        return -1.0 if v > KEEP_ALIVE_FOREVER_AFTER else v


class FunctionCall(_Req):
    name: str = Field(min_length=1, max_length=64, pattern=NAME.pattern)
    arguments: dict[str, object] = Field(default_factory=dict)


class ToolCall(_Req):
    function: FunctionCall
    id: str | None = Field(default=None, max_length=128)


class Message(_Req):
    role: str = Field(min_length=1, max_length=64)
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = Field(default=None, max_length=64)
    tool_call_id: str | None = Field(default=None, max_length=128)


class _Generation(_ModelReq):
    stream: bool = True
    format: FormatField = None
    options: OptionsField = Field(default_factory=Options)
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)


class GenerateRequest(_Generation):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = Field(default=None, max_length=1 << 20)
    raw: bool = False
    images: list[str] | None = None


class ChatRequest(_Generation):
    messages: list[Message] = Field(default_factory=list)
    tools: Tools = None
    tool_choice: str | None = Field(default=None, max_length=64, description="ff extension, as OpenAI's")


class EmbedRequest(_ModelReq):
    input: str | list[str] = ""
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1, le=1 << 16)
    options: OptionsField = Field(default_factory=Options)


class EmbeddingsRequest(_ModelReq):
    prompt: str = ""
    options: OptionsField = Field(default_factory=Options)


class NameRequest(_Req):
    model: str = Field(default="", max_length=512)
    name: str = Field(default="", max_length=512)  # older clients send ``name``
    stream: bool = True
    insecure: bool = False

    @property
    def ref(self) -> str:
        return self.model or self.name


ParamScalar = str | int | float | bool
_DIGEST_MAP = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=256)], Annotated[str, Field(max_length=80)]],
    Field(max_length=256),
]


class CreateRequest(_Req):
    """``POST /api/create`` as Ollama's clients send it: a model ``from`` an existing one, or from ``files``
    (name → ``sha256:…`` of a blob uploaded with ``POST /api/blobs/:digest``), with what a Modelfile says."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    model: str = Field(default="", max_length=512)
    name: str = Field(default="", max_length=512)  # older clients send ``name``
    from_: str | None = Field(default=None, alias="from", min_length=1, max_length=512)
    files: _DIGEST_MAP | None = None
    adapters: _DIGEST_MAP | None = None
    template: str | None = Field(default=None, max_length=1 << 20)
    system: str | None = Field(default=None, max_length=1 << 20)
    license: (
        Annotated[str, Field(max_length=1 << 20)]
        | Annotated[list[Annotated[str, Field(max_length=1 << 20)]], Field(max_length=64)]
        | None
    ) = None
    parameters: dict[str, ParamScalar | Annotated[list[ParamScalar], Field(max_length=64)]] | None = Field(
        default=None, max_length=256
    )
    messages: list[Message] | None = Field(default=None, max_length=4096)
    quantize: str | None = Field(default=None, max_length=32)
    modelfile: str | None = Field(default=None, max_length=1 << 20)  # removed by Ollama 0.5: refused
    stream: bool = True

    @property
    def ref(self) -> str:
        return self.model or self.name


class CopyRequest(_Req):
    source: str = Field(min_length=1, max_length=512)
    destination: str = Field(min_length=1, max_length=512)


_second: list[tuple[int, str]] = [(-1, "")]  # the last second now() formatted, and its text


def now() -> str:
    """The current UTC time as RFC 3339 with microseconds (``2026-12-07T03:04:05.123456Z``), as every
    stream line carries it: the second's text is formatted once (0.36 µs a call instead of 1.06)."""
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    cached, text = _second[0]
    if sec != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _second[0] = (sec, text)
    return f"{text}.{ns // 1000:06d}Z"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
