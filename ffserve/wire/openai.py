"""OpenAI API request bodies (chat completions, completions, embeddings)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ffserve.wire.options import Options, openai_options
from ffserve.wire.tools import NAME, Tools

TokenIds = list[Annotated[int, Field(ge=0, le=2**31 - 1)]]


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Req):
    url: str = Field(min_length=1)
    detail: str | None = Field(default=None, max_length=16)


class InputAudio(_Req):
    data: str
    format: str = Field(max_length=16)


class ContentPart(_Req):
    type: str = Field(max_length=64)
    text: str = ""
    image_url: ImageURL | str | None = None  # an object, or (as some clients send it) the URL itself
    input_audio: InputAudio | None = None


class FunctionCall(_Req):
    name: str = Field(min_length=1, max_length=64, pattern=NAME.pattern)
    arguments: str = Field(default="{}", description="the arguments as a JSON text")


class ToolCall(_Req):
    id: str = Field(default="", max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Req):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=64)
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(default=None, max_length=128)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""


class JsonSchemaSpec(_Req):
    name: str = Field(default="response", max_length=64)
    schema_: dict[str, object] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Req):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Req):
    include_usage: bool = False


class NamedFunction(_Req):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(_Req):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class _Sampling(_Req):
    model: str = Field(min_length=1, max_length=512)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=0, le=2**31 - 1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = Field(default=None, max_length=64)
    n: int = Field(default=1, ge=1, le=1)
    # extensions (as vLLM and llama.cpp's server take them): Ollama's samplers of the same names
    top_k: int | None = Field(default=None, ge=0, le=2**31 - 1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, ge=0, le=100)

    def options(self, max_tokens: int | None = None) -> Options:
        return openai_options(
            max_tokens=self.max_tokens if max_tokens is None else max_tokens,
            stop=self.stop,
            temperature=self.temperature,
            top_p=self.top_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
            top_k=self.top_k,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
        )


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: Tools = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_completion_tokens: int | None = Field(default=None, ge=0, le=2**31 - 1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)


class EmbeddingRequest(_Req):
    model: str = Field(min_length=1, max_length=512)
    input: str | list[str] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=1 << 16)
    user: str | None = None
