"""OpenAI Responses API request bodies (``POST /v1/responses``) as the ``openai`` SDK's
``responses.create`` sends them, and the answer's shape for ``/openapi.json``."""

from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import MaxLen
from pydantic import BaseModel, ConfigDict, Field

from ffserve.wire.tools import NAME, FunctionSpec, Tool

_Name = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME.pattern)]


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Req):
    """``input_text`` / ``output_text`` parts are text; ``input_image`` and ``input_file`` are refused."""

    type: Literal["input_text", "output_text", "text", "refusal", "input_image", "input_file", "input_audio"]
    text: str = ""
    refusal: str = ""


class MessageItem(_Req):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | Annotated[list[ContentPart], MaxLen(4096)]


class FunctionCallItem(_Req):
    type: Literal["function_call"]
    call_id: str = Field(max_length=128)
    name: _Name
    arguments: str = "{}"


class FunctionCallOutputItem(_Req):
    type: Literal["function_call_output"]
    call_id: str = Field(max_length=128)
    output: str | Annotated[list[ContentPart], MaxLen(4096)]


class ReasoningItem(_Req):
    """A reasoning item a client sends back: kept out of the prompt."""

    type: Literal["reasoning"]


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem


class FunctionTool(_Req):
    type: Literal["function"]
    name: _Name
    description: str | None = Field(default=None, max_length=16384)
    parameters: dict[str, object] | None = None
    strict: bool | None = None

    def tool(self) -> Tool:
        params = self.parameters or {"type": "object", "properties": {}}
        spec = FunctionSpec(name=self.name, description=self.description or "", parameters=params)
        return Tool(function=spec)


class NamedFunction(_Req):
    type: Literal["function"]
    name: _Name


class TextFormat(_Req):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(default=None, max_length=64)
    schema_: dict[str, object] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Req):
    format: TextFormat | None = None


class ResponsesRequest(_Req):
    model: str = Field(min_length=1, max_length=512)
    input: str | Annotated[list[InputItem], MaxLen(100_000)]
    instructions: str | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = Field(default=None, max_length=256)
    max_output_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: Annotated[list[FunctionTool], MaxLen(128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None


# --- the answer (for the OpenAPI document) ------------------------------------------------------------
class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class OutputItem(_Out):
    type: Literal["message", "function_call"]
    id: str
    status: Literal["in_progress", "completed", "incomplete"]


class ResponseUsage(_Out):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class ResponseObject(_Out):
    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress"]
    model: str
    output: list[OutputItem]
    usage: ResponseUsage | None = None
