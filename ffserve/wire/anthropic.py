"""Anthropic Messages API request bodies (``POST /v1/messages``, ``/v1/messages/count_tokens``) and the
shapes of its answers (for ``/openapi.json``), as https://docs.anthropic.com/en/api/messages describes
them and the ``anthropic`` SDK sends them."""

from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import MaxLen
from pydantic import BaseModel, ConfigDict, Field

from ffserve.wire.tools import NAME, FunctionSpec, Tool


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextBlock(_Req):
    type: Literal["text"]
    text: str


class ImageBlock(_Req):
    """Accepted in the schema so that its refusal is a clear 400 (no runtime here reads images yet)."""

    type: Literal["image", "document"]


class ToolUseBlock(_Req):
    type: Literal["tool_use"]
    id: str = Field(max_length=128)
    name: str = Field(min_length=1, max_length=64, pattern=NAME.pattern)
    input: dict[str, object] = Field(default_factory=dict)


class ToolResultBlock(_Req):
    type: Literal["tool_result"]
    tool_use_id: str = Field(max_length=128)
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool = False

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))


class ThinkingBlock(_Req):
    """A thinking block a client sends back: kept out of the prompt (ff models do not think in blocks)."""

    type: Literal["thinking", "redacted_thinking"]


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock, Field(discriminator="type")
]


class Message(_Req):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[Block], MaxLen(4096)]


class ToolSpec(_Req):
    name: str = Field(min_length=1, max_length=64, pattern=NAME.pattern)
    description: str = Field(default="", max_length=16384)
    input_schema: dict[str, object]

    def tool(self) -> Tool:
        """The tool as the OpenAI-shaped spec templates and constraints take."""
        fn = FunctionSpec(name=self.name, description=self.description, parameters=self.input_schema)
        return Tool(function=fn)


class ToolChoice(_Req):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, max_length=64)
    disable_parallel_tool_use: bool | None = None


class OutputFormat(_Req):
    type: Literal["json_schema"]
    schema_: dict[str, object] = Field(alias="schema")


class OutputConfig(_Req):
    """Structured outputs: ``format`` constrains the answer to a JSON schema (``effort`` is ignored)."""

    format: OutputFormat | None = None


class _Common(_Req):
    model: str = Field(min_length=1, max_length=512)
    messages: Annotated[list[Message], MaxLen(100_000)] = Field(min_length=1)
    system: str | Annotated[list[TextBlock], MaxLen(1024)] | None = None
    tools: Annotated[list[ToolSpec], MaxLen(128)] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None

    def system_text(self) -> str | None:
        if isinstance(self.system, list):
            return "\n\n".join(b.text for b in self.system)
        return self.system


class MessagesRequest(_Common):
    max_tokens: int = Field(ge=1, le=2**31 - 1)
    stop_sequences: Annotated[list[Annotated[str, MaxLen(1024)]], MaxLen(16)] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, object] | None = None


class CountTokensRequest(_Common):
    pass


# --- answers (for the OpenAPI document) -------------------------------------------------------------
class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Out):
    input_tokens: int
    output_tokens: int


class ContentOut(_Out):
    type: Literal["text", "tool_use"]
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, object] | None = None


class MessageOut(_Out):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[ContentOut]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None
    stop_sequence: str | None
    usage: Usage


class TokenCount(_Out):
    input_tokens: int


class ErrorDetail(_Out):
    type: str
    message: str


class AnthropicError(_Out):
    type: Literal["error"]
    error: ErrorDetail
