"""What a plan is: the typed :class:`BuildPlan` (and its parts) that ``ffbuild.planner.make_plan`` makes
from a parsed Modelfile, its folder and the build args. Types only; the planner gives them meaning.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from registry.choices import Family, default_backend

if TYPE_CHECKING:
    pass

ParamValue = int | float | bool | str | list[str]


class SourceKind(StrEnum):
    GGUF_FILE = "gguf-file"
    ONNX_FILE = "onnx-file"
    SAFETENSORS_FILE = "safetensors-file"
    HF_FOLDER = "hf-folder"
    CT2_FOLDER = "ctranslate2-folder"  # a CTranslate2 model folder (model.bin, config.json, vocabulary)
    HF_REPO = "hf-repo"
    OCI = "oci"


class Source(BaseModel):
    """Where the base weights come from (FROM, or DRAFT)."""

    model_config = ConfigDict(frozen=True)
    kind: SourceKind
    raw: str  # the text as written in the Modelfile
    path: Path | None = None  # absolute, for local files and folders
    repo: str | None = None  # org/name for hf-repo
    revision: str | None = None  # hf-repo revision (branch, tag or commit)
    reference: str | None = None  # OCI reference (local store name or host/ns/name:tag)


class Adapter(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: str  # "gguf" (a GGUF LoRA file) or "peft" (a folder with adapter_config.json + safetensors)
    path: Path
    raw: str


class Variant(BaseModel):
    """One compiled output: a quantization on a target with a backend."""

    model_config = ConfigDict(frozen=True)
    quantization: str  # a key of choices.QUANTIZATIONS, or "source" to keep the source's own precision
    device: str  # a key of choices.DEVICES
    device_detail: str | None = None  # e.g. "sm_90" for "cuda:sm_90"
    backend: str  # a key of choices.BACKENDS
    options: dict[str, str] = Field(default_factory=dict)  # TARGET key=value
    family: Family  # what builds it (registry.choices.variant_family), set once by the planner

    @property
    def target(self) -> str:
        return f"{self.device}:{self.device_detail}" if self.device_detail else self.device

    @property
    def name(self) -> str:
        """``<quant>-<target>``, safe as part of an OCI tag (``q4_k_m-cpu``, ``fp16-cuda-sm_90``); the
        compiled backends add their name (``fp32-cpu-tvm``, ``fp16-cuda-tensorrt``), so one tag holds
        the same graph for onnxruntime and for them (a backend other than the device's default)."""
        suffix = f"-{self.backend}" if self.backend != default_backend(self.family, self.device) else ""
        return f"{self.quantization}-{self.target.replace(':', '-')}{suffix}"


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: str
    content: str


class VerifyPolicy(BaseModel):
    """Thresholds from ``VERIFY key=value …``; a variant below them fails the build."""

    model_config = ConfigDict(frozen=True)
    min_agreement: float | None = None  # greedy next-token agreement with the reference variant, 0..1
    max_perplexity_ratio: float | None = None  # perplexity / reference perplexity
    prompt: str | None = None  # a prompt the variant must complete
    min_cosine: float | None = None  # tensor variants: cosine to the source model (default by precision)
    max_wer: float | None = None  # speech variants: word error rate on the verify clips, 0..1 (and more)


class BuildPlan(BaseModel):
    model_config = ConfigDict(frozen=True)
    modelfile: Path | None  # the Modelfile's path, when it came from a file
    context: Path  # the folder relative paths resolve against
    source: Source
    variants: tuple[Variant, ...]
    task: str  # a key of choices.TASKS
    task_inferred: bool = False
    template: str | None = None
    system: str | None = None
    parameters: dict[str, ParamValue] = Field(default_factory=dict)
    messages: tuple[Message, ...] = ()
    adapters: tuple[Adapter, ...] = ()
    licenses: tuple[str, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    requires: str | None = None
    draft: Source | None = None
    projector: Path | None = None  # a second FROM: a multimodal projector GGUF (as Ollama's two FROM lines)
    renderer: str | None = None
    parser: str | None = None
    verify: VerifyPolicy = Field(default_factory=VerifyPolicy)
    requantize: bool = False  # QUANTIZE … requantize=true: allow quantizing an already quantized source
    build_args: dict[str, str] = Field(default_factory=dict)
    text: str = ""  # the Modelfile text after ARG substitution (stored in the artifact)
    warnings: tuple[str, ...] = ()  # things that build but deserve a look (deprecated parameters, …)
