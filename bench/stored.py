"""A GGUF file stored as ``bench:latest`` in a benchmark's own FF_HOME, the way `ff build` would keep it."""

from __future__ import annotations

from pathlib import Path


def store_model(home: Path, gguf: Path) -> None:
    from registry.artifact import layer, tag_model, write_index, write_variant
    from registry.modelpack import ModelConfig, ModelDescriptor, ModelFS, ModelPackConfig
    from registry.oci import ANN_BACKEND, ANN_FORMAT, ANN_QUANTIZATION, ANN_TARGET, ANN_VARIANT, MODEL_WEIGHT
    from registry.store import Store

    store = Store(home / "store")
    layers = [layer(store, MODEL_WEIGHT, "model.gguf", file=gguf)]
    config = ModelPackConfig(
        descriptor=ModelDescriptor(name="bench"),
        config=ModelConfig(format="gguf"),
        modelfs=ModelFS(diff_ids=[d.digest for d in layers]),
    )
    ann = {ANN_VARIANT: "x-cpu", ANN_TARGET: "cpu", ANN_BACKEND: "llamacpp", ANN_FORMAT: "gguf",
           ANN_QUANTIZATION: "x"}
    tag_model(store, "bench:latest", write_index(store, [write_variant(store, config, layers, ann)]))
