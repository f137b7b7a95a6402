"""What FROM, DRAFT and ADAPTER name: resolve the text to a :class:`~ffbuild.plan.Source` (or
:class:`~ffbuild.plan.Adapter`), and learn what a local source is without loading it.

Resolution, in order: ``hf://org/repo[@revision]``; a path (``~`` expanded, relative to the Modelfile's
folder) that exists, which must be a ``.gguf`` / ``.onnx`` / ``.safetensors`` file or a Hugging Face
folder (one with ``config.json``) or a CTranslate2 folder (``model.bin``, ``config.json``, a vocabulary);
text that looks like a path (``./``, ``/``, ``~``, a known suffix)
but does not exist is an error; anything else must be an OCI reference (``name:tag``,
``host/ns/name:tag``). Nothing is downloaded: a remote source is only checked for form.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffbuild.errors import Problem
from ffbuild.plan import Adapter, Source, SourceKind
from registry.choices import SOURCE_FORMATS
from registry.reference import ReferenceError, parse_reference

_HF_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HF_REPO = re.compile(rf"{_HF_NAME}/{_HF_NAME}")
_HF_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_MAX_JSON = 4 * 1024 * 1024  # config files larger than this are not read

# Hugging Face model types whose base model is an encoder that yields embeddings.
_ENCODER_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "nomic_bert", "jina_bert", "modernbert",
     "camembert", "electra", "deberta", "deberta-v2", "e5", "new", "gte"}
)  # fmt: skip
# GGUF architectures llama.cpp runs as embedding models.
_EMBED_ARCHS = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "modern-bert", "neo-bert", "t5encoder"}
)


@dataclass(frozen=True)
class SourceFacts:
    """What a source is, as far as can be told without loading it (None: unknown)."""

    embedding: bool | None = None
    classifier: bool | None = None
    chat_template: bool | None = None
    quantization: str | None = None  # a GGUF source's type (choices.QUANTIZATIONS key or ggml name)
    quantized: bool | None = None
    adapter: bool = False
    speech: bool = False  # a CTranslate2 Whisper folder (TASK transcribe)


def resolve_source(raw: str, base: Path) -> Source:
    """The source ``raw`` names, relative paths taken from ``base``; a :class:`Problem` says why not."""
    text = raw.strip()
    if not text:
        raise Problem(
            "FROM needs a source", hint="a .gguf/.onnx/.safetensors file, a folder, hf://org/repo or name:tag"
        )
    if text.startswith("hf://"):
        return _hf_source(raw, text[5:])
    path = _local_path(text, base)
    if path.exists():
        return _local_source(raw, path)
    if _looks_like_path(text):
        raise Problem(f"{path}: no such file or folder")
    try:
        reference = parse_reference(text)
    except ReferenceError as exc:
        raise Problem(
            f"{text!r} is not an existing path, an hf:// repository or a model reference: {exc}",
            hint="local paths are relative to the Modelfile's folder",
        ) from None
    return Source(kind=SourceKind.OCI, raw=raw, reference=str(reference))


def resolve_adapter(raw: str, base: Path) -> Adapter:
    """An ADAPTER: a GGUF LoRA file, or a PEFT folder (``adapter_config.json`` + weights)."""
    text = raw.strip()
    if not text:
        raise Problem("ADAPTER needs a path", hint="a GGUF LoRA file or a PEFT folder")
    path = _local_path(text, base)
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise Problem(f"{path}: not a PEFT adapter folder (no adapter_config.json)")
        if not any(path.glob("adapter_model.*")):
            raise Problem(f"{path}: the PEFT folder has no adapter_model.safetensors (or .bin)")
        return Adapter(kind="peft", path=path, raw=raw)
    if path.is_file():
        if path.suffix.lower() != ".gguf" or not _has_magic(path, b"GGUF"):
            raise Problem(f"{path}: an ADAPTER file must be a GGUF LoRA (a .gguf file)")
        facts = inspect_source(Source(kind=SourceKind.GGUF_FILE, raw=raw, path=path))
        if facts.adapter is False and facts.quantization is not None:
            raise Problem(f"{path}: this GGUF is a model, not a LoRA adapter", hint="use it with FROM")
        return Adapter(kind="gguf", path=path, raw=raw)
    raise Problem(
        f"{path}: no such file or folder", hint="ADAPTER paths are relative to the Modelfile's folder"
    )


def inspect_source(source: Source) -> SourceFacts:
    """Read what a local (or HF-cached) source says about itself: config files or the GGUF header."""
    if source.kind == SourceKind.GGUF_FILE and source.path is not None:
        return _gguf_facts(source.path)
    if source.kind == SourceKind.CT2_FOLDER and source.path is not None:
        return SourceFacts(speech=is_whisper_config(_read_json(source.path / "config.json")))
    folder: Path | None = None
    if source.kind == SourceKind.HF_FOLDER:
        folder = source.path
    elif source.kind == SourceKind.SAFETENSORS_FILE and source.path is not None:
        folder = source.path.parent
    elif source.kind == SourceKind.HF_REPO and source.repo:
        folder = hf_cache_snapshot(source.repo, source.revision)
    return _folder_facts(folder) if folder is not None else SourceFacts()


def hf_cache_snapshot(repo: str, revision: str | None) -> Path | None:
    """The folder of ``repo``@``revision`` in the local Hugging Face cache, if it is there."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub"
    )
    root = Path(hub) / ("models--" + repo.replace("/", "--"))
    rev = revision or "main"
    commit = rev if re.fullmatch(r"[0-9a-f]{40}", rev) else None
    if commit is None:
        try:
            commit = (root / "refs" / rev).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
    snapshot = root / "snapshots" / commit
    return (
        snapshot if re.fullmatch(r"[0-9a-f]{40}", commit) and (snapshot / "config.json").is_file() else None
    )


# --- resolution -------------------------------------------------------------------------------------


def _hf_source(raw: str, spec: str) -> Source:
    repo, at, revision = spec.partition("@")
    if not _HF_REPO.fullmatch(repo) or "--" in repo or ".." in repo:
        raise Problem(
            f"hf://{repo}: not a Hugging Face repository id",
            hint="write hf://<org>/<name>[@revision], e.g. hf://HuggingFaceTB/SmolLM2-135M-Instruct",
        )
    if at and (not _HF_REVISION.fullmatch(revision) or ".." in revision):
        raise Problem(f"@{revision}: not a revision (a branch, tag or commit)")
    return Source(kind=SourceKind.HF_REPO, raw=raw, repo=repo, revision=revision or None)


def _local_path(text: str, base: Path) -> Path:
    path = Path(text).expanduser() if text.startswith("~") else Path(text)
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith((".", "/", "~", "\\"))
        or "\\" in text
        or Path(text).suffix.lower() in SOURCE_FORMATS
        or text.endswith("/")
    )


def _local_source(raw: str, path: Path) -> Source:
    if path.is_dir():
        if is_ct2_folder(path):
            return Source(kind=SourceKind.CT2_FOLDER, raw=raw, path=path)
        if (path / "config.json").is_file():
            return Source(kind=SourceKind.HF_FOLDER, raw=raw, path=path)
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in SOURCE_FORMATS)[:3]
        raise Problem(
            f"{path}: a folder without config.json is not a Hugging Face model folder",
            hint=f"name a file inside it instead: {', '.join(inside)}" if inside else None,
        )
    fmt = SOURCE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise Problem(
            f"{path}: unrecognised kind of file (expected .gguf, .onnx or .safetensors, or a model folder)"
        )
    if fmt == "gguf":
        if not _has_magic(path, b"GGUF"):
            raise Problem(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
        return Source(kind=SourceKind.GGUF_FILE, raw=raw, path=path)
    if fmt == "safetensors":
        _check_safetensors(path)
        if not (path.parent / "config.json").is_file():
            raise Problem(
                f"{path}: a .safetensors file needs its config.json beside it to be converted",
                hint="put config.json and the tokenizer files next to it, or FROM the model's folder",
            )
        return Source(kind=SourceKind.SAFETENSORS_FILE, raw=raw, path=path)
    return Source(kind=SourceKind.ONNX_FILE, raw=raw, path=path)


CT2_VOCABULARIES = ("vocabulary.txt", "vocabulary.json", "shared_vocabulary.txt", "shared_vocabulary.json")
"""The vocabulary files CTranslate2's converters write beside ``model.bin``."""


def is_ct2_folder(path: Path) -> bool:
    """A CTranslate2 model folder: ``model.bin``, ``config.json`` and a vocabulary file."""
    return (
        (path / "model.bin").is_file()
        and (path / "config.json").is_file()
        and any((path / name).is_file() for name in CT2_VOCABULARIES)
    )


def is_whisper_config(config: dict[str, Any]) -> bool:
    """Whether a CTranslate2 ``config.json`` is a Whisper model's (its converter writes these keys)."""
    return "suppress_ids" in config and "lang_ids" in config


def _has_magic(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError as exc:
        raise Problem(f"{path}: cannot read it: {exc.strerror or exc}") from None


def _check_safetensors(path: Path) -> None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise Problem(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if len(head) < 9 or struct.unpack("<Q", head[:8])[0] + 8 > size or head[8:9] != b"{":
        raise Problem(f"{path}: not a safetensors file (bad header)")


# --- inspection -------------------------------------------------------------------------------------


def _gguf_facts(path: Path) -> SourceFacts:
    try:
        from ffbuild.stages.gguf_info import is_quantized, read_gguf_info
    except ImportError:  # the gguf extra is not installed: nothing more can be learned here
        return SourceFacts()
    from ffbuild.stages.errors import StageError

    try:
        info = read_gguf_info(path)
    except StageError as exc:
        raise Problem(str(exc)) from None
    except Exception as exc:  # a hostile header must give an error, never a traceback
        raise Problem(f"{path}: cannot read the GGUF header ({type(exc).__name__}: {exc})") from None
    return SourceFacts(
        embedding=info.pooling_type is not None or info.architecture in _EMBED_ARCHS,
        classifier=False,
        chat_template=bool(info.chat_template),
        quantization=info.quantization,
        quantized=is_quantized(info),
        adapter=info.is_adapter,
    )


def _folder_facts(folder: Path) -> SourceFacts:
    config = _read_json(folder / "config.json")
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    model_type = config.get("model_type")
    tokenizer_config = _read_json(folder / "tokenizer_config.json")
    chat = bool(tokenizer_config.get("chat_template")) or any(
        (folder / name).is_file() for name in ("chat_template.jinja", "chat_template.json")
    )
    sentence_transformers = any(
        (folder / name).is_file() for name in ("modules.json", "sentence_bert_config.json")
    )
    classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    generative = any(
        a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures
    )
    encoder = model_type in _ENCODER_TYPES and not generative and not classifier
    return SourceFacts(
        embedding=sentence_transformers or encoder,
        classifier=classifier,
        chat_template=chat,
        speech=model_type == "whisper",
    )


def _read_json(path: Path) -> dict[str, Any]:
    """A small JSON object file, or {} when it is missing, too large or not an object."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_JSON:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
