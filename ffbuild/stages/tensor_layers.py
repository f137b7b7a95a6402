"""The layers of a tensor variant's build-cache entry: weights, ``graph.json`` and tokenizer files."""

from __future__ import annotations

from pathlib import Path

from ffbuild.cache import file_digest
from ffbuild.stages.context import BuildError, Built, ExtraLayer, WeightFile
from ffruntime.graph_spec import GRAPH_SPEC_FILE, GraphSpec
from registry.oci import FF_GRAPH, MODEL_WEIGHT, MODEL_WEIGHT_CONFIG


def entry_layers(
    entry: Path, names: list[str], weights: set[str], prefix: str = ""
) -> tuple[ExtraLayer, ...]:
    out = []
    for name in names:
        path = entry / name
        media = (
            MODEL_WEIGHT if name in weights else FF_GRAPH if name == GRAPH_SPEC_FILE else MODEL_WEIGHT_CONFIG
        )
        out.append(ExtraLayer(media, prefix + name, owned(path)))
    return tuple(out)


def owned(path: Path) -> WeightFile:
    return WeightFile(path, file_digest(path), path.stat().st_size, build_owned=True)


def spec_of(built: Built) -> GraphSpec:
    for x in built.extra:
        if x.filepath.endswith(GRAPH_SPEC_FILE):
            return GraphSpec.model_validate_json(x.file.path.read_bytes())
    raise BuildError(f"{built.weight.path}: the graph has no {GRAPH_SPEC_FILE}")
