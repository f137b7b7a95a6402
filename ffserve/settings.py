"""Server settings: one pydantic model read from flags > ``FF_*`` environment variables > a TOML file."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ffruntime.settings import LoadSettings, MediaLimits

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_DUR_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_bytes(value: str | int) -> int:
    """``"8GiB"``, ``"512MB"``, ``"1000"`` or an int → bytes."""
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not a size (bytes, or a number with KB/MB/GB/KiB/MiB/GiB)")
    unit = (m.group(2) or "").lower().rstrip("b")
    scale = 1024 ** ("kmgt".index(unit[0]) + 1) if unit.endswith("i") else _UNITS[unit]
    return int(float(m.group(1)) * scale)


def parse_duration(value: str | float | int) -> float:
    """Ollama's keep_alive: seconds, or Go-style ``"5m"``, ``"1h30m"``, ``"-1"``; negative: forever."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _DUR_RE.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"{value!r} is not a duration (seconds, or e.g. '5m', '1h30m', '-1')")
    return sign * sum(float(n) * _DUR_UNITS[u] for n, u in parts)


def _toml_path() -> Path | None:
    env = os.environ.get("FF_CONFIG")
    if env:
        return Path(env).expanduser()
    return None


class Settings(BaseSettings):
    """Everything ``ff serve`` can be told. Precedence: flags > ``FF_*`` > TOML (``FF_CONFIG``) > defaults."""

    model_config = SettingsConfigDict(env_prefix="FF_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(default=11435, ge=0, le=65535)
    # The Open Inference Protocol over gRPC on this port of the same host (ffserve.grpc_server); None: off.
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="models to load at start (ready when loaded)"
    )
    models_dir: Path | None = None  # a model folder to serve, e.g. KServe's /mnt/models (docs/delivery.md)
    model_name: str | None = None  # the name the --models-dir model is served as (default: the folder's)
    target: str | None = None
    quantize: str | None = None
    backend: str | None = None  # only variants of this backend (llamacpp, onnxruntime, …): a requirement
    pull: bool = False
    registry_insecure: bool = False  # plain HTTP to registries (loopback ones always may)
    keep_alive: float = 300.0
    max_memory: int = 0  # 0: no budget
    max_loaded_models: int = Field(default=3, ge=1)
    max_queue: int = Field(default=64, ge=1)
    num_parallel: int = Field(default=0, ge=0, le=64)  # 0: from the model's size and memory (docs/serving.md)
    num_threads: int = Field(default=0, ge=0)  # 0: llama.cpp adapts up to every core (docs/serving.md)
    graph_lanes: int = Field(default=0, ge=0)  # 0: one lane per thread (ffruntime.settings.LoadSettings)
    num_ctx: int | None = Field(default=None, ge=16)  # None: the model's PARAMETER num_ctx, else 2048
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1)
    max_upload_bytes: int = Field(default=256 * 1024**3, ge=1)  # one blob uploaded to /api/blobs/:digest
    # Bounds on a request's images and audio (ffruntime.settings.MediaLimits; docs/serving.md).
    max_image_bytes: int = Field(default=MediaLimits.image_bytes, ge=1)
    max_image_pixels: int = Field(default=MediaLimits.image_pixels, ge=1)
    max_audio_bytes: int = Field(default=MediaLimits.audio_bytes, ge=1)
    max_audio_seconds: float = Field(default=MediaLimits.audio_seconds, gt=0)
    max_media_items: int = Field(default=MediaLimits.request_items, ge=1)
    max_media_bytes: int = Field(default=MediaLimits.request_bytes, ge=1)
    max_media_pixels: int = Field(default=MediaLimits.request_pixels, ge=1)
    allow_remote_images: bool = False  # fetch OpenAI image_url http(s) URLs (off: only data URLs)
    shutdown_timeout: float = 30.0
    access_log: bool = True

    @field_validator(
        "max_memory",
        "max_body_bytes",
        "max_upload_bytes",
        "max_image_bytes",
        "max_audio_bytes",
        "max_media_bytes",
        mode="before",
    )
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        return parse_bytes(v) if isinstance(v, str) else v

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    @field_validator("models", "api_keys", mode="before")
    @classmethod
    def _csv(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path()
        if path is not None:
            if not path.is_file():
                raise ValueError(f"FF_CONFIG={path}: no such file")
            try:
                tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{path}: not valid TOML: {exc}") from None
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def load_settings(self, params: Mapping[str, object] | None = None) -> LoadSettings:
        """How this server loads a model with PARAMETERs ``params`` (``ffruntime``'s one settings type; 0
        threads: its default; :meth:`LoadSettings.for_model`, the rule ``ff run`` follows too)."""
        return LoadSettings.for_model(
            params or {},
            num_ctx=self.num_ctx,
            threads=self.num_threads,
            lanes=self.graph_lanes,
            num_parallel=self.num_parallel,
            media=self.media_limits(),
        )

    def media_limits(self) -> MediaLimits:
        return MediaLimits(
            image_bytes=self.max_image_bytes,
            image_pixels=self.max_image_pixels,
            audio_bytes=self.max_audio_bytes,
            audio_seconds=self.max_audio_seconds,
            request_bytes=self.max_media_bytes,
            request_pixels=self.max_media_pixels,
            request_items=self.max_media_items,
        )
