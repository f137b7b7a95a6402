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
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class Capability(StrEnum):
    CHAT = "chat"
    GENERATE = "completion"
    EMBED = "embedding"
    TENSOR = "tensor"


ParamValue = str | int | float | bool | list[str]


class RequestRejected(ValueError):
    """The runtime cannot run this request as given (bad template, unsupported option); a 400."""


class PromptTooLong(RequestRejected):
    """The prompt does not fit the model's context."""


class UnsupportedSchema(RequestRejected):
    """An output constraint's JSON schema uses ``feature``, which the grammar engine cannot enforce."""

    def __init__(self, message: str, feature: str) -> None:
        super().__init__(message)
        self.feature = feature


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made: ``arguments`` is the parsed JSON object."""

    name: str
    arguments: Mapping[str, object]
    id: str = ""


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn. ``tool_calls`` on an assistant turn; ``tool_name``/``tool_call_id`` on a
    ``role="tool"`` turn (the result of a call)."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_name: str | None = None
    tool_call_id: str | None = None
    images: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class FreeText:
    """No constraint on the output."""


@dataclass(frozen=True)
class JsonObject:
    """Any JSON object (Ollama's ``format: "json"``, OpenAI's ``json_object``)."""


@dataclass(frozen=True)
class JsonSchema:
    """JSON valid for ``schema``; ``source`` is the request field it came from, named in errors.
    :func:`ffruntime.constraints.json_schema` builds it from a client's schema, checked."""

    schema: Mapping[str, object]
    source: str = "format"


@dataclass(frozen=True)
class ForcedToolCall:
    """One call ``{"name": …, "arguments": {…}}`` to the tool ``name``, or to any of ``tools`` (OpenAI/
    Ollama-shaped function specs) when ``name`` is None: a ``tool_choice`` of a name or ``required``.
    :func:`ffruntime.constraints.forced_tool_call` builds it, checked."""

    tools: tuple[Mapping[str, object], ...]
    name: str | None = None


Constraint = FreeText | JsonObject | JsonSchema | ForcedToolCall
"""What the output must be; each text runtime compiles it for its engine (llama.cpp: GBNF)."""


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
    constraint: Constraint = FreeText()  # format / response_format / a forced tool call
    # Tools (JSON-schema function specs, OpenAI/Ollama shape) offered to the chat template.
    tools: Sequence[Mapping[str, object]] | None = None
    # Return each generated token's logprob, and the ``top_logprobs`` most likely alternatives.
    logprobs: bool = False
    top_logprobs: int = 0
    cancel: CancelFlag = field(default_factory=CancelFlag)


DoneReason = Literal["stop", "length", "cancelled"]
"""``stop``: an end-of-generation token or a stop string; ``length``: ``num_predict`` reached or the
context full; ``cancelled``: the client went away."""


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, natural-log probability, and the likeliest alternatives."""

    token: str
    logprob: float
    bytes: tuple[int, ...] = ()
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Token:
    """A piece of generated text (whole UTF-8 characters): one or more model tokens, whose logprobs
    are in ``logprobs`` when the request asked for them."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


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
    """One float32 row per input (``vectors[i]`` is input ``i``'s), and the tokens they took."""

    vectors: npt.NDArray[np.float32]
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


EmbedInput = str | Sequence[int]
"""A text, or token ids already made with the model's tokenizer (OpenAI's token-array input)."""


@runtime_checkable
class EmbedRuntime(Runtime, Protocol):
    """L2-normalised embeddings, one per input; inputs that arrive together may run as one batch."""

    async def embed(
        self, texts: Sequence[EmbedInput], *, truncate: bool, cancel: CancelFlag
    ) -> Embeddings: ...


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of a tensor model: OIP datatype (``FP32``, ``INT64``, ``BYTES``, ``BOOL``…)
    and shape (-1 for a dynamic axis)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


Tensor = tuple[str, list[int], bytes]
"""(OIP datatype, shape, raw little-endian bytes; BYTES elements are 4-byte-length-prefixed)."""


@runtime_checkable
class TensorRuntime(Runtime, Protocol):
    """Open Inference Protocol tensors in, tensors out (ONNX/TVM/TensorRT backends, and embedding
    models with a BYTES text input). Requests that arrive together may run as one batch."""

    @property
    def tensor_inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def tensor_outputs(self) -> tuple[TensorSpec, ...]: ...

    async def infer(
        self, inputs: Mapping[str, Tensor], cancel: CancelFlag, outputs: Sequence[str] | None = None
    ) -> dict[str, Tensor]: ...
