"""Build stages: fetch → convert → quantize → adapters → verify → package (see ffbuild.build.STAGES).

Each stage module holds the typed functions of one step: ``fetch`` (sources), ``convert`` (HF folder →
GGUF), ``quantize``, ``lora`` (adapters), ``verify`` and ``package`` (manifests, index and tags in the
store); ``gguf_info`` reads GGUF headers and ``errors`` holds :class:`StageError`.
"""
