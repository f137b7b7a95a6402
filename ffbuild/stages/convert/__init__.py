"""The convert stage: a Hugging Face model folder → a GGUF file (f32, f16 or bf16) llama.cpp runs.

Reads config.json, the safetensors weights (memory-mapped, sharded or not) and the tokenizer files;
writes GGUF hyper-parameters, vocabulary, special tokens, chat template and tensors with the ``gguf``
package's writer and numpy only (no torch). The header is written first from the tensor plan and the
data is streamed one tensor at a time into a temp file that is renamed into place at the end.

The output is byte-deterministic: the same folder and options give the same file (no timestamps, a
fixed key and tensor order), so build digests are reproducible.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from ffbuild.stages.convert.architectures import SUPPORTED_ARCHITECTURES, HFConfig, architecture_for
from ffbuild.stages.convert.safetensors_reader import SafetensorsFolder
from ffbuild.stages.convert.tensors import OUT_TYPES, PlannedTensor, plan_tensors, tensor_chunks
from ffbuild.stages.convert.vocab import decoder_vocab, wordpiece_vocab, write_vocab
from ffbuild.stages.errors import ConvertError
from ffbuild.stages.gguf_info import GGUFInfo, read_gguf_info, size_label
from registry.atomic import atomic_output

__all__ = ["OUTTYPES", "SUPPORTED_ARCHITECTURES", "convert_hf_to_gguf", "default_model_name"]

OUTTYPES: tuple[str, ...] = tuple(OUT_TYPES)
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
}
_NP_DTYPES = {
    gguf.GGMLQuantizationType.F32: "float32",
    gguf.GGMLQuantizationType.F16: "float16",
    gguf.GGMLQuantizationType.BF16: "uint16",
}


def default_model_name(folder: Path) -> str:
    """``general.name``: the folder's name, or the repo's name for a Hugging Face cache snapshot."""
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.split("--")[-1]
    return folder.name


def convert_hf_to_gguf(folder: Path, out: Path, outtype: str = "f16", *, name: str | None = None) -> GGUFInfo:
    """Convert the Hugging Face model in ``folder`` to a GGUF file at ``out`` and describe it.

    ``outtype`` is ``f32``, ``f16`` or ``bf16`` (quantize the result with the quantize stage).
    ``name`` sets ``general.name`` (default: :func:`default_model_name`). Unsupported architectures
    raise :class:`~ffbuild.stages.errors.UnsupportedArchitectureError`; bad folders :class:`ConvertError`.
    """
    if outtype not in OUT_TYPES:
        raise ConvertError(f"cannot convert to {outtype!r}: choose one of {', '.join(OUT_TYPES)}")
    if not folder.is_dir():
        raise ConvertError(f"{folder} is not a folder")
    cfg = HFConfig.read(folder)
    arch = architecture_for(cfg)
    vocab = wordpiece_vocab(folder, cfg) if arch.vocab == "wordpiece" else decoder_vocab(folder, cfg)
    with SafetensorsFolder(folder) as st:
        plan = plan_tensors(arch, cfg, st, outtype)
        _check_embedding(plan, len(vocab.tokens))
        writer = gguf.GGUFWriter(None, arch.name)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name if name is not None else default_model_name(folder))
        writer.add_size_label(size_label(sum(t.n_elements for t in plan)))
        arch.write_hparams(writer, cfg, folder)
        writer.add_file_type(_FILE_TYPES[outtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(writer, vocab, folder)
        for t in plan:
            dtype = np.dtype(_NP_DTYPES[t.out_type])
            writer.add_tensor_info(t.name, t.shape, dtype, t.nbytes, raw_dtype=t.out_type)
        with atomic_output(out) as tmp:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            writer.close()
            _write_data(tmp, plan, st, writer.data_alignment)
    return read_gguf_info(out)


def _check_embedding(plan: list[PlannedTensor], n_vocab: int) -> None:
    embd = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"
    rows = next(t.shape[0] for t in plan if t.name == embd)
    if rows != n_vocab:
        raise ConvertError(f"the token embedding has {rows} rows but the vocabulary has {n_vocab} tokens")


def _write_data(path: Path, plan: list[PlannedTensor], st: SafetensorsFolder, align: int) -> None:
    with path.open("ab") as f:
        f.write(b"\0" * (-f.tell() % align))
        for t in plan:
            written = 0
            for chunk in tensor_chunks(t, st):
                f.write(chunk)  # type: ignore[arg-type]
                written += len(chunk) if isinstance(chunk, bytes) else chunk.nbytes
            if written != t.nbytes:
                raise ConvertError(f"tensor {t.name}: wrote {written} bytes, expected {t.nbytes}")
            f.write(b"\0" * (-written % align))

