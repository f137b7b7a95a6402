"""``graph.json``: what a tensor variant's graph takes and gives, written by the build, read by runtimes.

- ``task``: ``embed`` (token ids + mask in, the sentence embedding out), ``classify`` (the same in,
  logits out) or ``tensor`` (the graph's own tensors, served as they are).
- ``inputs`` / ``outputs``: the graph's tensors (OIP datatypes, -1 for a dynamic axis).
- ``max_length``: the longest token sequence the model takes (text tasks).
- ``buckets``: for ahead-of-time compiled graphs with static shapes (TVM), the (batch, sequence)
  shapes compiled; a request is padded to the smallest that holds it.
- ``labels``: class names for ``classify`` (from the model config's ``id2label``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from ffruntime.runtime import TensorSpec

GRAPH_SPEC_FILE: Final = "graph.json"
TOKENIZER_FILE: Final = "tokenizer.json"


class IOSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1, max_length=256)
    datatype: str
    shape: tuple[int, ...]

    def tensor_spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.datatype, self.shape)


class GraphSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    task: Literal["embed", "classify", "tensor"]
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    max_length: int | None = None
    buckets: tuple[tuple[int, int], ...] = ()
    labels: tuple[str, ...] = ()

    @property
    def text(self) -> bool:
        return self.task in ("embed", "classify")


def read_graph_spec(files: dict[str, Path]) -> GraphSpec:
    """The variant's ``graph.json`` (``files``: layer filepath → blob path)."""
    path = files.get(GRAPH_SPEC_FILE)
    if path is None:
        raise ValueError(f"the variant has no {GRAPH_SPEC_FILE} layer")
    return GraphSpec.model_validate_json(path.read_bytes())
