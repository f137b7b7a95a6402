"""Ollama API request bodies (https://github.com/ollama/ollama/blob/main/docs/api.md)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ffruntime.runtime import ParamValue
from ffserve.settings import parse_duration

Options = dict[str, ParamValue]
KEEP_ALIVE_FOREVER_AFTER = 10 * 365 * 24 * 3600.0
"""A keep_alive longer than ten years means forever (and keeps expiry times representable)."""
FormatField = Literal["", "json"] | dict[str, object] | None


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _ModelReq(_Req):
    model: str = Field(min_length=1, max_length=512)
    keep_alive: float | None = None

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


class Message(_Req):
    role: str = Field(min_length=1, max_length=64)
    content: str = ""
    images: list[str] | None = None


class GenerateRequest(_ModelReq):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    stream: bool = True
    format: FormatField = None
    options: Options = Field(default_factory=dict)
    images: list[str] | None = None


class ChatRequest(_ModelReq):
    messages: list[Message] = Field(default_factory=list)
    stream: bool = True
    format: FormatField = None
    options: Options = Field(default_factory=dict)
    tools: list[dict[str, object]] | None = None


class EmbedRequest(_ModelReq):
    input: str | list[str] = ""
    truncate: bool = True
    options: Options = Field(default_factory=dict)


class EmbeddingsRequest(_ModelReq):
    prompt: str = ""
    options: Options = Field(default_factory=dict)


class NameRequest(_Req):
    model: str = Field(default="", max_length=512)
    name: str = Field(default="", max_length=512)  # older clients send ``name``
    stream: bool = True
    insecure: bool = False

    @property
    def ref(self) -> str:
        return self.model or self.name


class CopyRequest(_Req):
    source: str = Field(min_length=1, max_length=512)
    destination: str = Field(min_length=1, max_length=512)


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
