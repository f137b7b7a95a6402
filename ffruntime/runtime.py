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
    TRANSCRIBE = "transcription"
    VISION = "vision"  # takes images (a projector)
    AUDIO = "audio"  # takes audio clips (a projector)


ParamValue = str | int | float | bool | list[str]


class RequestRejected(ValueError):
    """The runtime cannot run this request as given (bad template, unsupported option); a 400."""


class PromptTooLong(RequestRejected):
    """The prompt does not fit the model's context."""


class MediaRejected(RequestRejected):
    """An image or audio clip that cannot be taken: not decodable, of another kind than declared,
    animated, or the model takes no media of its kind; a 400."""


class MediaTooLarge(MediaRejected):
    """An image or clip over the bytes or pixels allowed per item or per request, or audio longer than
    allowed; a 413."""


MediaKind = Literal["image", "audio"]


@dataclass(frozen=True)
class Media:
    """An image or audio clip as the client sent it: the file's bytes, the kind the client declared, and
    the MIME type it declared, if any (``image/png``, ``audio/wav``); checked when decoded."""

    data: bytes
    kind: MediaKind = "image"
    mime: str | None = None


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
    media: tuple[Media, ...] = ()  # images and clips of this turn, placed before its text


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
    media: tuple[Media, ...] = ()  # images and clips of a ``prompt`` (chat: on each message)
    # Return each generated token's logprob, and the ``top_logprobs`` most likely alternatives.
    logprobs: bool = False
    top_logprobs: int = 0
    cancel: CancelFlag = field(default_factory=CancelFlag)

    def all_media(self) -> tuple[Media, ...]:
        """Every image and clip of the request, in prompt order (the prompt's, then each message's)."""
        return (*self.media, *(m for msg in self.messages or () for m in msg.media))

    def media_needs(self) -> frozenset[Capability]:
        """The capabilities its media ask of a model (:attr:`Capability.VISION`, :attr:`Capability.AUDIO`)."""
        kinds = {m.kind for m in self.all_media()}
        return frozenset(Capability.VISION if k == "image" else Capability.AUDIO for k in kinds)


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
    stop_sequence: str | None = None  # the stop string that ended the text (reason "stop"), if one did


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


@dataclass(frozen=True)
class TranscriptionRequest:
    """Speech to text: the encoded audio (any format FFmpeg reads) and Whisper's options.

    ``task`` is ``transcribe`` (text in the spoken language) or ``translate`` (English text);
    ``language`` an ISO-639-1 code or None to detect it; ``prompt`` Whisper's initial prompt;
    ``temperature`` 0 decodes greedily (with the model's fallback temperatures when None);
    ``words``: word timestamps too."""

    audio: bytes
    task: Literal["transcribe", "translate"] = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    words: bool = False
    cancel: CancelFlag = field(default_factory=CancelFlag)


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Segment:
    """A stretch of recognised speech, in seconds from the start of the audio."""

    id: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class TranscriptionInfo:
    language: str
    duration: float  # seconds of audio


def piece(text: str, first: bool) -> str:
    """A segment's text as the next piece of a transcript: the first without leading space, the others
    after one space (sequential segments carry theirs; batched chunks do not)."""
    text = text.strip()
    return text if first or not text else " " + text


def transcript(texts: Sequence[str]) -> str:
    """The segments' texts as one transcript."""
    return "".join(piece(t, i == 0) for i, t in enumerate(texts))


@runtime_checkable
class TranscribeRuntime(Runtime, Protocol):
    """Speech to text: :meth:`transcribe` decodes the audio (a :class:`RequestRejected` for bad audio,
    :class:`MediaTooLarge` for too long) and returns its facts and the segments as they are decoded."""

    async def transcribe(
        self, request: TranscriptionRequest
    ) -> tuple[TranscriptionInfo, AsyncIterator[Segment]]: ...
