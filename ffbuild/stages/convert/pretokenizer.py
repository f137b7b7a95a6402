"""Which llama.cpp BPE pre-tokenizer (``tokenizer.ggml.pre``) a Hugging Face tokenizer needs.

llama.cpp re-implements each family's pre-tokenizer regex under a name (``smollm``, ``llama-bpe``,
``qwen2``…). Like llama.cpp's converter we identify the family by tokenizing a fixed probe text and
hashing the ids: a hash we know gives the name. A tokenizer we have no hash for is recognised by the
shape of its ``pre_tokenizer`` in tokenizer.json when that shape is unambiguous; anything else is an
error, because a wrong pre-tokenizer silently degrades every prompt.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ffbuild.stages.errors import ConvertError, MissingDependencyError

# The probe text of llama.cpp's convert_hf_to_gguf_update.py (whitespace runs, emoji, digits, CJK,
# Khmer, Cyrillic, quotes and contractions): its token ids tell pre-tokenizers apart.
PROBE_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256 of str(ids of PROBE_TEXT) → llama.cpp pre-tokenizer name, for the families we convert
# (hashes as published in llama.cpp's converter; the comment names the tokenizer each comes from).
KNOWN_HASHES: dict[str, str] = {
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen/Qwen1.5-7B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3-Embedding-0.6B
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",  # starcoder2-3b
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral-Nemo
    # bge-small-en-v1.5 and jina-embeddings-v2-base-en share this hash; llama.cpp's converter ends on the
    # latter (its checks do not stop at the first match), so we write the same name.
    "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f": "jina-v2-en",
}

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def probe_hash(tokenizer_json: Path) -> str:
    """The hash of the tokenizer's ids for :data:`PROBE_TEXT` (special tokens added, no truncation)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise MissingDependencyError("tokenizers", "hf", "Converting a BPE tokenizer") from e
    try:
        tok = Tokenizer.from_file(str(tokenizer_json))
    except Exception as e:  # the tokenizers library raises its own exception types
        raise ConvertError(f"{tokenizer_json}: the tokenizers library cannot load it ({e})") from e
    tok.no_truncation()
    tok.no_padding()
    ids = tok.encode(PROBE_TEXT).ids
    return hashlib.sha256(str(ids).encode()).hexdigest()


def _shape(pre: object) -> str | None:
    """A name for pre-tokenizer structures whose llama.cpp equivalent is unambiguous."""
    if not isinstance(pre, dict):
        return None
    kind = pre.get("type")
    if kind == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if kind != "Sequence":
        return None
    parts = pre.get("pretokenizers") or []
    kinds = [p.get("type") for p in parts if isinstance(p, dict)]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "starcoder" if parts[1].get("use_regex", True) else None
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        pattern = (parts[0].get("pattern") or {}).get("Regex")
        if isinstance(pattern, str):
            return {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}.get(pattern)
    return None


def bpe_pre_tokenizer(folder: Path) -> str:
    """The ``tokenizer.ggml.pre`` name for the folder's BPE tokenizer.json."""
    path = folder / "tokenizer.json"
    known = probe_hash(path)
    if known in KNOWN_HASHES:
        return KNOWN_HASHES[known]
    try:
        pre = json.loads(path.read_text(encoding="utf-8")).get("pre_tokenizer")
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from e
    by_shape = _shape(pre)
    if by_shape is not None:
        return by_shape
    names = sorted(set(KNOWN_HASHES.values()))
    raise ConvertError(
        f"{path}: unrecognised BPE pre-tokenizer (probe hash {known}); the converter knows "
        + ", ".join(names)
    )


def wordpiece_pre_tokenizer(folder: Path) -> str:
    """For BERT vocabularies llama.cpp ignores the name; we record the family when we know it."""
    return KNOWN_HASHES.get(probe_hash(folder / "tokenizer.json"), "default")
