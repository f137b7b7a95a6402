"""Tokenizer files of a Hugging Face folder → the GGUF vocabulary llama.cpp tokenizes with.

Three kinds, as llama.cpp names them in ``tokenizer.ggml.model``:

- ``gpt2``: byte-level BPE from tokenizer.json (tokens, merges, and the pre-tokenizer name);
- ``llama``: SentencePiece, from ``tokenizer.model`` (a protobuf read by :mod:`.sentencepiece_model`)
  or from a tokenizer.json that is SentencePiece-style BPE (byte fallback, ``▁`` for spaces);
- ``bert``: WordPiece, with llama.cpp's "phantom space" spelling (``##ing`` → ``ing``, ``the`` → ``▁the``).

Special token ids, add-BOS/EOS flags and the chat template come from ``gguf.SpecialVocab`` (which
reads tokenizer_config.json, chat_template.jinja and config.json).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from ffbuild.stages.convert.architectures import HFConfig
from ffbuild.stages.convert.pretokenizer import bpe_pre_tokenizer, wordpiece_pre_tokenizer
from ffbuild.stages.convert.sentencepiece_model import read_sentencepiece_model
from ffbuild.stages.errors import ConvertError

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_SPACE = "\u2581"


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: bool = False  # whether SpecialVocab should load BPE merges
    add_bos_default: bool | None = None  # written when the tokenizer files do not say
    extra: dict[str, bool | int] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: cannot read it as JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    return data


def _looks_special(token: str) -> bool:
    return (
        (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
        or token in ("<pad>", "<mask>")
    )


def _added_token(text: str, entry: dict[str, Any]) -> tuple[str, int]:
    """An added token's GGUF text and type: special ones stay as written (CONTROL); others are
    user-defined, with the BPE space marker turned back into a space."""
    if bool(entry.get("special")) or _looks_special(text):
        return text, int(gguf.TokenType.CONTROL)
    return text.replace(_SPACE, " "), int(gguf.TokenType.USER_DEFINED)


def _vocab_size(cfg: HFConfig, ids: list[int], path: Path) -> int:
    size = cfg.int("vocab_size", default=max(ids) + 1)
    if max(ids) >= size:
        raise ConvertError(f"{path}: token id {max(ids)} is outside config.json's vocab_size {size}")
    return size


def _table(
    tok: dict[str, Any], cfg: HFConfig, path: Path
) -> tuple[list[str | None], dict[int, dict[str, Any]]]:
    """Tokens by id (None where no token has that id) and added-token entries by id."""
    model = tok.get("model") or {}
    vocab = model.get("vocab")
    if isinstance(vocab, list):  # Unigram: [[piece, score], …]
        vocab = {str(p[0]): i for i, p in enumerate(vocab)}
    if not isinstance(vocab, dict) or not vocab:
        raise ConvertError(f"{path}: model.vocab is missing or empty")
    added = {int(a["id"]): a for a in tok.get("added_tokens") or [] if isinstance(a, dict) and "id" in a}
    ids = [int(i) for i in vocab.values()] + list(added)
    if min(ids) < 0:
        raise ConvertError(f"{path}: negative token id")
    table: list[str | None] = [None] * _vocab_size(cfg, ids, path)
    for text, i in vocab.items():
        table[int(i)] = str(text)
    for i, a in added.items():
        table[i] = str(a.get("content", ""))
    return table, added


def gpt2_vocab(folder: Path, cfg: HFConfig) -> Vocab:
    path = folder / "tokenizer.json"
    table, added = _table(_read_json(path), cfg, path)
    tokens: list[str] = []
    types: list[int] = []
    for i, text in enumerate(table):
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            token, kind = _added_token(text, added[i])
            tokens.append(token)
            types.append(kind)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
    return Vocab("gpt2", bpe_pre_tokenizer(folder), tokens, types, merges=True, add_bos_default=False)


def _spm_from_model_file(folder: Path, cfg: HFConfig) -> Vocab:
    spm = read_sentencepiece_model(folder / "tokenizer.model")
    size = cfg.int("vocab_size", default=len(spm.pieces))
    tokens = [f"[PAD{i}]" for i in range(size)]
    scores = [-10000.0] * size
    types = [int(gguf.TokenType.UNUSED)] * size
    for i, (piece, score, kind) in enumerate(spm.pieces[:size]):
        tokens[i], scores[i], types[i] = piece, score, kind
    config_path = folder / "tokenizer_config.json"
    decoder = _read_json(config_path).get("added_tokens_decoder", {}) if config_path.is_file() else {}
    for raw_id, entry in decoder.items():
        i = int(raw_id)
        if 0 <= i < size and isinstance(entry, dict):
            tokens[i], types[i] = _added_token(str(entry.get("content", "")), entry)
            scores[i] = -1000.0
    extra: dict[str, bool | int] = {"add_space_prefix": spm.add_dummy_prefix}
    return Vocab("llama", "default", tokens, types, scores, extra=extra)


def _spm_from_tokenizer_json(folder: Path, cfg: HFConfig, tok: dict[str, Any]) -> Vocab:
    """SentencePiece-style BPE in tokenizer.json: a token's score ranks the merge that makes it."""
    path = folder / "tokenizer.json"
    table, added = _table(tok, cfg, path)
    merges = tok["model"].get("merges") or []
    rank: dict[str, int] = {}
    for r, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    unk = tok["model"].get("unk_token")
    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []
    for i, text in enumerate(table):
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            scores.append(-10000.0)
            continue
        tokens.append(text)
        if i in added:
            types.append(_added_token(text, added[i])[1])  # the text stays as the model spells it
            scores.append(-1000.0)
        elif text == unk:
            types.append(gguf.TokenType.UNKNOWN)
            scores.append(0.0)
        elif _BYTE_TOKEN.match(text):
            types.append(gguf.TokenType.BYTE)
            scores.append(0.0)
        else:
            types.append(gguf.TokenType.NORMAL)
            scores.append(-float(rank[text]) if text in rank else -float(len(merges) + i))
    return Vocab("llama", "default", tokens, types, scores, extra={"add_space_prefix": True})


def _is_spm_json(tok: dict[str, Any]) -> bool:
    model = tok.get("model") or {}
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def decoder_vocab(folder: Path, cfg: HFConfig) -> Vocab:
    """The vocabulary of a decoder model: SentencePiece when the folder has one, else byte-level BPE."""
    if (folder / "tokenizer.model").is_file():
        return _spm_from_model_file(folder, cfg)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ConvertError(f"{folder} has neither tokenizer.json nor tokenizer.model")
    tok = _read_json(path)
    if _is_spm_json(tok):
        return _spm_from_tokenizer_json(folder, cfg, tok)
    kind = (tok.get("model") or {}).get("type")
    if kind != "BPE":
        raise ConvertError(f"{path}: a {kind} tokenizer is not supported for decoder models (BPE only)")
    return gpt2_vocab(folder, cfg)


def wordpiece_vocab(folder: Path, cfg: HFConfig) -> Vocab:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ConvertError(f"{folder} has no tokenizer.json (a BERT model needs its WordPiece tokenizer)")
    tok = _read_json(path)
    if (tok.get("model") or {}).get("type") != "WordPiece":
        raise ConvertError(f"{path}: expected a WordPiece tokenizer for a BERT model")
    table, added = _table(tok, cfg, path)
    tokens: list[str] = []
    types: list[int] = []
    for i, text in enumerate(table):
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added and added[i].get("special"):
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL)
        else:  # llama.cpp's WordPiece spells word starts with ▁ and continuations bare
            tokens.append(text[2:] if text.startswith("##") else _SPACE + text)
            types.append(gguf.TokenType.NORMAL)
    extra: dict[str, bool | int] = {"token_type_count": cfg.int("type_vocab_size", default=1)}
    return Vocab("bert", wordpiece_pre_tokenizer(folder), tokens, types, extra=extra)


def _normalizer_flags(node: object, flags: dict[str, bool]) -> None:
    """BertNormalizer-style options (lowercase, strip accents) of a tokenizer.json normalizer."""
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "Lowercase":
        flags["lowercase"] = True
    elif kind == "StripAccents":
        flags["strip_accents"] = True
    elif kind == "BertNormalizer":
        for key in ("lowercase", "strip_accents"):
            if isinstance(node.get(key), bool):
                flags[key] = node[key]
    elif kind == "Sequence":
        for child in node.get("normalizers") or []:
            _normalizer_flags(child, flags)


def write_vocab(w: gguf.GGUFWriter, vocab: Vocab, folder: Path) -> None:
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    if "token_type_count" in vocab.extra:
        w.add_token_type_count(int(vocab.extra["token_type_count"]))
    if "add_space_prefix" in vocab.extra:
        w.add_add_space_prefix(bool(vocab.extra["add_space_prefix"]))
    special = gguf.SpecialVocab(folder, load_merges=vocab.merges, n_vocab=len(vocab.tokens))
    if vocab.merges and not special.merges:
        raise ConvertError(f"{folder}: the BPE tokenizer has no merges")
    if vocab.add_bos_default is not None:
        special.add_special_token.setdefault("bos", vocab.add_bos_default)
    # token kinds this gguf version has no key for (e.g. "cls" before gguf 0.20) would only log a warning
    for kind in [k for k in special.special_token_ids if not hasattr(w, f"add_{k}_token_id")]:
        del special.special_token_ids[kind]
    special.add_to_gguf(w, quiet=True)
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        flags: dict[str, bool] = {}
        _normalizer_flags(_read_json(tokenizer_json).get("normalizer"), flags)
        for key in ("lowercase", "strip_accents"):  # llama.cpp's WordPiece reads these; default lowercase
            if key in flags:
                w.add_bool(f"tokenizer.ggml.normalizer.{key}", flags[key])
