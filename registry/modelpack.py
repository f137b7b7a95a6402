"""The CNCF ModelPack model config (``application/vnd.cncf.model.config.v1+json``), v0.0.7.

The schema forbids extra fields at every level, so these models do too: what ModelPack has no field
for travels as FerrousForge layers and ``io.ferrousforge.*`` annotations instead.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Modality = Literal["text", "image", "audio", "video", "embedding", "other"]
_PARAM_SIZE = re.compile(r"^[0-9]+(?:\.[0-9])?[QqTtBbMmKk]$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelDescriptor(_Strict):
    created_at: str | None = Field(default=None, alias="createdAt")
    authors: list[str] | None = None
    family: str | None = None
    name: str | None = Field(default=None, min_length=1)
    doc_url: str | None = Field(default=None, alias="docURL")
    source_url: str | None = Field(default=None, alias="sourceURL")
    datasets_url: list[str] | None = Field(default=None, alias="datasetsURL")
    version: str | None = None
    revision: str | None = None
    vendor: str | None = None
    licenses: list[str] | None = None
    title: str | None = None
    description: str | None = None


class ModelCapabilities(_Strict):
    input_types: list[Modality] | None = Field(default=None, alias="inputTypes")
    output_types: list[Modality] | None = Field(default=None, alias="outputTypes")
    knowledge_cutoff: str | None = Field(default=None, alias="knowledgeCutoff")
    reasoning: bool | None = None
    tool_usage: bool | None = Field(default=None, alias="toolUsage")
    reward: bool | None = None
    languages: list[str] | None = None


class ModelConfig(_Strict):
    architecture: str | None = None
    format: str | None = None
    param_size: str | None = Field(default=None, alias="paramSize")
    precision: str | None = None
    quantization: str | None = None
    capabilities: ModelCapabilities | None = None

    @field_validator("param_size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and not _PARAM_SIZE.match(v):
            raise ValueError(f"paramSize {v!r} is not <count><K|M|B|T|Q> (e.g. 135M, 6.7B)")
        return v


class ModelFS(_Strict):
    type: Literal["layers"] = "layers"
    diff_ids: list[str] = Field(alias="diffIds", min_length=1)


class ModelPackConfig(_Strict):
    descriptor: ModelDescriptor
    config: ModelConfig
    modelfs: ModelFS

    def wire(self) -> dict[str, object]:
        return self.model_dump(by_alias=True, exclude_none=True)


def param_size(count: int) -> str:
    """Format a parameter count as ModelPack's paramSize (``135M``, ``6.7B``)."""
    for scale, letter in ((10**15, "Q"), (10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if count >= scale:
            value = count / scale
            text = f"{value:.1f}".rstrip("0").rstrip(".") if value < 100 else f"{round(value)}"
            return f"{text}{letter}"
    return f"{max(count, 1) / 1000:.1f}K"
