"""Build stages: one module per stage, each with its worker and its ``run(ctx)``.

The stages run in the order of :data:`ffbuild.stages.order.STAGES`, each on the variants of its families
(``Variant.family``: gguf, genai, tensor):

- ``fetch`` — :mod:`~ffbuild.stages.fetch`: the source on this machine (file, HF folder or repo, store).
- ``convert`` (gguf, genai) — :mod:`~ffbuild.stages.convert.stage`: the base GGUF (and a multimodal
  model's projector), converted from a HF folder by llama.cpp's own converter
  (:mod:`~ffbuild.stages.convert`).
- ``quantize`` (gguf) — :mod:`~ffbuild.stages.quantize`: GGUF types through llama.cpp's quantizer.
- ``genai`` (genai) — :mod:`~ffbuild.stages.genai`: ONNX Runtime GenAI exports.
- ``adapters`` (gguf) — :mod:`~ffbuild.stages.lora`: ADAPTERs (GGUF LoRAs checked, PEFT converted by
  llama.cpp's ``convert_lora_to_gguf.py``).
- ``export`` (tensor) — :mod:`~ffbuild.stages.onnx_export`: ONNX graphs (fp32, then fp16/int8 by
  :mod:`~ffbuild.stages.onnx_quantize`).
- ``compile`` (tensor) — :mod:`~ffbuild.stages.compile`: TVM libraries (:mod:`~ffbuild.stages.tvm_compile`)
  and TensorRT engines (:mod:`~ffbuild.stages.tensorrt_build`).
- ``verify`` (gguf, genai) — :mod:`~ffbuild.stages.verify`: figures against the reference GGUF
  (:mod:`~ffbuild.stages.verify.gguf`, :mod:`~ffbuild.stages.verify.genai`) and the VERIFY policy.
- ``verify-tensor`` (tensor) — :mod:`~ffbuild.stages.verify_tensor`: cosine to the source model.
- ``package`` — :mod:`~ffbuild.stages.package`: manifests, index and tags in the store.

Beside them: :mod:`~ffbuild.stages.context` (the :class:`BuildContext` every ``run`` takes, and the
build's types), :mod:`~ffbuild.stages.tools` (tool versions in cache keys), ``gguf_info``, ``atomic``,
``tensor_layers`` and ``errors``. Nothing here imports the pipeline above it (:mod:`ffbuild.build`,
the planner); ``tests/test_layering.py`` checks it.
"""
