"""OCI and ModelPack media types, annotation keys and the JSON shapes of manifests and indexes.

Wire types for everything that crosses the store or a registry live here, so that the compiler, the
store, the registry client and the server agree on one spelling.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

# --- OCI ---------------------------------------------------------------------------------------------
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY: Final = "application/vnd.oci.empty.v1+json"
OCI_LAYOUT_VERSION: Final = "1.0.0"
ANNOTATION_REF_NAME: Final = "org.opencontainers.image.ref.name"
ANNOTATION_TITLE: Final = "org.opencontainers.image.title"
ANNOTATION_CREATED: Final = "org.opencontainers.image.created"

# --- CNCF ModelPack v0.0.7 -----------------------------------------------------------------------------
MODEL_ARTIFACT_TYPE: Final = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG: Final = "application/vnd.cncf.model.config.v1+json"
MODEL_WEIGHT: Final = "application/vnd.cncf.model.weight.v1.raw"
MODEL_WEIGHT_CONFIG: Final = "application/vnd.cncf.model.weight.config.v1.raw"
MODEL_DOC: Final = "application/vnd.cncf.model.doc.v1.raw"
ANNOTATION_FILEPATH: Final = "org.cncf.model.filepath"

# --- FerrousForge layers (what ModelPack has no field for) --------------------------------------------
FF_TEMPLATE: Final = "application/vnd.ferrousforge.template.v1+text"
FF_SYSTEM: Final = "application/vnd.ferrousforge.system.v1+text"
FF_PARAMS: Final = "application/vnd.ferrousforge.params.v1+json"
FF_MESSAGES: Final = "application/vnd.ferrousforge.messages.v1+json"
FF_MODELFILE: Final = "application/vnd.ferrousforge.modelfile.v1+text"
FF_ADAPTER: Final = "application/vnd.ferrousforge.adapter.v1.raw"
FF_VERIFY: Final = "application/vnd.ferrousforge.verify.v1+json"
FF_GRAPH: Final = "application/vnd.ferrousforge.graph.v1+json"  # a tensor variant's graph.json

FF_ANNOTATION_PREFIX: Final = "io.ferrousforge."
ANN_TARGET: Final = "io.ferrousforge.target"
ANN_BACKEND: Final = "io.ferrousforge.backend"
ANN_FORMAT: Final = "io.ferrousforge.format"
ANN_QUANTIZATION: Final = "io.ferrousforge.quantization"
ANN_PRECISION: Final = "io.ferrousforge.precision"
ANN_RUNTIME: Final = "io.ferrousforge.runtime"
ANN_MIN_MEMORY: Final = "io.ferrousforge.min-memory-bytes"
ANN_TASK: Final = "io.ferrousforge.task"
ANN_VARIANT: Final = "io.ferrousforge.variant"
ANN_AGREEMENT: Final = "io.ferrousforge.verify.agreement"
ANN_PPL_RATIO: Final = "io.ferrousforge.verify.perplexity-ratio"
ANN_COSINE: Final = "io.ferrousforge.verify.cosine"  # tensor variants: min cosine to the source model
ANN_WER: Final = "io.ferrousforge.verify.wer"  # speech variants: word error rate on the verify clips
ANN_WEIGHT_ROLE: Final = "io.ferrousforge.weight.role"  # on a weight layer: "projector" (multimodal)
ROLE_PROJECTOR: Final = "projector"
PROJECTOR_FILEPATH: Final = "mmproj.gguf"
"""A multimodal variant's projector: a ModelPack weight layer with this filepath and role annotation."""

# --- Ollama (read by `ff pull` for interop) ------------------------------------------------------------
OLLAMA_MODEL: Final = "application/vnd.ollama.image.model"
OLLAMA_ADAPTER: Final = "application/vnd.ollama.image.adapter"
OLLAMA_PROJECTOR: Final = "application/vnd.ollama.image.projector"
OLLAMA_TEMPLATE: Final = "application/vnd.ollama.image.template"
OLLAMA_SYSTEM: Final = "application/vnd.ollama.image.system"
OLLAMA_PARAMS: Final = "application/vnd.ollama.image.params"
OLLAMA_MESSAGES: Final = "application/vnd.ollama.image.messages"
OLLAMA_LICENSE: Final = "application/vnd.ollama.image.license"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"

MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
"""Manifests and indexes larger than this are refused (registries commonly cap at 4 MiB)."""

_DIGEST_RE: Final = re.compile(r"^sha256:[a-f0-9]{64}$")


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed sha256 digest; raise ``ValueError`` otherwise."""
    if not _DIGEST_RE.match(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest


def canonical_json(obj: Any) -> bytes:
    """Serialise JSON deterministically (sorted keys, no whitespace) so digests are reproducible."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Platform(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")
    architecture: str
    os: str
    variant: str | None = None


class Descriptor(BaseModel):
    """An OCI content descriptor."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")
    media_type: str = Field(alias="mediaType")
    digest: str
    size: int = Field(ge=0)
    annotations: dict[str, str] | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")
    platform: Platform | None = None

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str) -> str:
        return check_digest(v)

    def wire(self) -> dict[str, Any]:
        """The descriptor as it appears in JSON (camelCase, unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True)


class Manifest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")
    schema_version: int = Field(alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] | None = None


class Index(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")
    schema_version: int = Field(alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    manifests: list[Descriptor]
    annotations: dict[str, str] | None = None
