"""The one async interface every backend implements (llama.cpp; ONNX Runtime, TVM, TensorRT).

A runtime declares what it can do in ``capabilities``; the routes check a capability before calling
the matching protocol (:class:`TextRuntime`, :class:`EmbedRuntime`, :class:`TensorRuntime`), so a new
backend implements only the protocols of the capabilities it declares.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol, runtime_checkable


class Capability(StrEnum):
    CHAT = "chat"
    GENERATE = "completion"
    EMBED = "embedding"
    TENSOR = "tensor"


ParamValue = str | int | float | bool | list[str]
JsonSchema = dict[str, object]
Format = Literal["json"] | JsonSchema | None


class RequestRejected(ValueError):
    """The runtime cannot run this request as given (bad template, unsupported option); a 400."""


class PromptTooLong(RequestRejected):
    """The prompt does not fit the model's context."""


def is_param(v: object) -> bool:
    if isinstance(v, list):
        return all(isinstance(x, str) for x in v)
    return isinstance(v, str | int | float | bool)


def model_options(params: Mapping[str, object], overrides: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
    """A request's options: the artifact's Modelfile ``PARAMETER``s, overridden by the request's own."""
    defaults: dict[str, ParamValue] = {k: v for k, v in params.items() if is_param(v)}  # type: ignore[misc]
    return {**defaults, **overrides}


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass
class CancelFlag:
    """Set by the server when the client went away; a runtime checks it between decoding steps."""

    _event: threading.Event = field(default_factory=threading.Event)

    def set(self) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()


@dataclass
class GenerationRequest:
    """What to generate. ``messages`` for chat (the runtime applies the template), else ``prompt``."""

    prompt: str = ""
    messages: Sequence[ChatMessage] | None = None
    system: str | None = None
    template: str | None = None  # a per-request template override (Ollama ``template``)
    raw: bool = False  # the prompt is sent as is, no template
    suffix: str | None = None
    context: Sequence[int] = ()
    options: Mapping[str, ParamValue] = field(default_factory=dict)  # Modelfile params ∪ request options
    format: Format = None
    cancel: CancelFlag = field(default_factory=CancelFlag)


DoneReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Done:
    reason: DoneReason
    prompt_tokens: int
    completion_tokens: int
    prompt_eval_ns: int
    eval_ns: int
    context: tuple[int, ...] = ()


Event = Token | Done


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


@runtime_checkable
class Runtime(Protocol):
    """A loaded model. ``close`` frees it; ``memory_bytes`` is what the scheduler budgets for it;
    ``parallel`` is how many requests it runs at once (the scheduler admits that many)."""

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    @property
    def memory_bytes(self) -> int: ...

    @property
    def context_length(self) -> int: ...

    @property
    def parallel(self) -> int: ...

    async def close(self) -> None: ...


@runtime_checkable
class TextRuntime(Runtime, Protocol):
    """``chat`` / ``completion``: a stream of tokens ending with one :class:`Done`."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]: ...


@runtime_checkable
class EmbedRuntime(Runtime, Protocol):
    async def embed(self, texts: Sequence[str], *, truncate: bool, cancel: CancelFlag) -> Embeddings: ...


@runtime_checkable
class TensorRuntime(Runtime, Protocol):
    """Open Inference Protocol tensors in, tensors out (ONNX/TVM/TensorRT backends)."""

    async def infer(
        self, inputs: Mapping[str, tuple[str, list[int], bytes]], cancel: CancelFlag
    ) -> dict[str, tuple[str, list[int], bytes]]: ...
