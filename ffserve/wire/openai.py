"""OpenAI API request bodies (chat completions, completions, embeddings)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Req):
    type: str
    text: str = ""


class ChatMessage(_Req):
    role: str = Field(min_length=1, max_length=64)
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""


class JsonSchemaSpec(_Req):
    name: str = "response"
    schema_: dict[str, object] = Field(default_factory=dict, alias="schema")


class ResponseFormat(_Req):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Req):
    include_usage: bool = False


class _Sampling(_Req):
    model: str = Field(min_length=1, max_length=512)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)

    def options(self) -> dict[str, float | int | list[str]]:
        out: dict[str, float | int | list[str]] = {}
        for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.max_tokens is not None:
            out["num_predict"] = self.max_tokens
        if self.stop is not None:
            out["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return out


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, object]] | None = None
    max_completion_tokens: int | None = Field(default=None, ge=0)
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    suffix: str | None = None
    echo: bool = False


class EmbeddingRequest(_Req):
    model: str = Field(min_length=1, max_length=512)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
