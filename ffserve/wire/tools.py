"""Function-calling wire types both APIs share: a tool is ``{"type": "function", "function": {…}}``."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from annotated_types import MaxLen
from pydantic import BaseModel, ConfigDict, Field

NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _empty_object() -> dict[str, object]:
    return {"type": "object", "properties": {}}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionSpec(_Wire):
    name: str = Field(min_length=1, max_length=64, pattern=NAME.pattern)
    description: str = Field(default="", max_length=16384)
    parameters: dict[str, object] = Field(default_factory=_empty_object)
    strict: bool | None = None


class Tool(_Wire):
    type: Literal["function"] = "function"
    function: FunctionSpec

    def spec(self) -> dict[str, object]:
        """The OpenAI/Ollama JSON shape templates and prompts are given."""
        fn: dict[str, object] = {"name": self.function.name, "parameters": self.function.parameters}
        if self.function.description:
            fn["description"] = self.function.description
        return {"type": "function", "function": fn}


Tools = Annotated[list[Tool], MaxLen(128)] | None
