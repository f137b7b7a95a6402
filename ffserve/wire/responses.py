"""Response shapes, for the OpenAPI document (``/openapi.json``) and the fuzz test that holds the
server to it. Fields a response always carries are required; extra fields are allowed, as clients of
both APIs ignore what they do not know."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- errors -------------------------------------------------------------------------------------------
class OllamaError(_Out):
    error: str


class OpenAIErrorBody(_Out):
    message: str
    type: str
    code: int | str | None = None


class OpenAIError(_Out):
    error: OpenAIErrorBody


# --- Ollama ---------------------------------------------------------------------------------------------
class Logprob(_Out):
    token: str
    logprob: float
    bytes: list[int] | None = None


class LogprobWithTop(Logprob):
    top_logprobs: list[Logprob] = []


class FunctionCallOut(_Out):
    name: str
    arguments: dict[str, object]


class ToolCallOut(_Out):
    function: FunctionCallOut


class MessageOut(_Out):
    role: str
    content: str
    tool_calls: list[ToolCallOut] | None = None


class _Timings(_Out):
    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[LogprobWithTop] | None = None


class GenerateResponse(_Timings):
    response: str
    context: list[int] | None = None


class ChatResponse(_Timings):
    message: MessageOut


class EmbedResponse(_Out):
    model: str
    embeddings: list[list[float]]


class EmbeddingResponse(_Out):
    embedding: list[float]


class ModelDetails(_Out):
    format: str
    family: str
    parameter_size: str
    quantization_level: str


class ModelEntry(_Out):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagsResponse(_Out):
    models: list[ModelEntry]


class ShowResponse(_Out):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    capabilities: list[str]


class RunningModel(_Out):
    name: str
    model: str
    size: int
    expires_at: str


class PsResponse(_Out):
    models: list[RunningModel]


class StatusResponse(_Out):
    status: str


class VersionResponse(_Out):
    version: str


# --- OpenAI ---------------------------------------------------------------------------------------------
class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class OpenAIFunction(_Out):
    name: str
    arguments: str


class OpenAIToolCall(_Out):
    id: str
    type: Literal["function"]
    function: OpenAIFunction


class AssistantMessage(_Out):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[OpenAIToolCall] | None = None


class ChatChoice(_Out):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: dict[str, object] | None = None


class ChatCompletion(_Out):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(_Out):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: dict[str, object] | None = None


class Completion(_Out):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class EmbeddingData(_Out):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingList(_Out):
    object: Literal["list"]
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelObject(_Out):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Out):
    object: Literal["list"]
    data: list[ModelObject]


# --- operations ---------------------------------------------------------------------------------------
class Health(_Out):
    status: str
