"""ONNX LLM serving speed: ``ff serve`` of the int4 variant against onnxruntime-genai called directly,
and against the q4_0 GGUF variant of the same model, single-stream and 4-stream, in one run.

The model is modelfiles/smollm2-multi built from a SmolLM2 Hugging Face folder (``--hf``; default: the
folder the tests make). The baseline loads the same int4 files with ``onnxruntime_genai`` in this
process (same intra-op thread count, greedy) and decodes with one ``og.Generator`` per stream on its
own thread — what the GenAI API allows on a CPU (its continuous batching needs a CUDA paged-attention
model). Ours streams ``/api/generate`` (NDJSON, raw prompt, ``num_predict``) from ``python -m ffcli
serve`` subprocesses (``FF_BACKEND=onnxruntime`` and ``llamacpp``, ``FF_NUM_PARALLEL=4``). Rounds
alternate so drifting load on the shared machine hits every side.

    python bench/serve_genai.py [--hf PATH] [--threads N] [--tokens 64] [--rounds 3]

Prints tokens/s per side (medians; 4-stream = all streams' tokens / wall time) and the ratios
served/direct (target ≥ 0.95) and ONNX/GGUF, and GenAI's own static batch of 4 (``og.Engine``) for
comparison with ff's concurrent generators.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PROMPT = "Once upon a time, in a small village by the sea, there lived"
TAG = "smollm2-multi:latest"


def _default_hf() -> Path:
    found = sorted((Path.home() / ".cache" / "ferrousforge-tests").glob("smollm2-hf-*/SmolLM2-135M-Instruct"))
    if not found:
        raise SystemExit("pass --hf PATH (a SmolLM2-135M-Instruct Hugging Face folder)")
    return found[-1]


def _build(home: Path, hf: Path) -> None:
    shared = Path.home() / ".cache" / "ferrousforge-tests" / "genai-cache"
    if shared.is_dir():
        (home / "cache").symlink_to(shared)
    modelfile = REPO / "modelfiles" / "smollm2-multi" / "Modelfile"
    env = {**os.environ, "FF_HOME": str(home), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ffcli", "build", "-f", str(modelfile), "-t", TAG]
    cmd += ["--build-arg", f"SOURCE={hf}"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)


def _int4_folder(home: Path, dest: Path) -> Path:
    from registry.artifact import open_variant, variants_of
    from registry.store import Store

    store = Store(home / "store")
    v = next(v for v in variants_of(store, TAG) if v.backend == "onnxruntime")
    for filepath, blob in open_variant(store, v.descriptor.digest).files.items():
        (dest / filepath).symlink_to(blob)
    return dest


class Direct:
    """onnxruntime-genai as a user would call it: one Model, one Generator per stream."""

    def __init__(self, folder: Path, threads: int) -> None:
        import numpy as np
        import onnxruntime_genai as og

        self.og, self.np = og, np
        cfg = og.Config(str(folder))
        cfg.clear_providers()
        opts = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
        self.model = og.Model(cfg)
        self.prompt = self.np.asarray(og.Tokenizer(self.model).encode(PROMPT), dtype=np.int32)

    def stream(self, tokens: int) -> int:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(self.prompt) + tokens, do_sample=False)
        gen = self.og.Generator(self.model, params)
        gen.append_tokens(self.prompt)
        n = 0
        while not gen.is_done():
            gen.generate_next_token()
            gen.get_next_tokens()
            n += 1
        return n


class StaticBatch:
    """GenAI's own batching on the CPU: ``og.Engine`` without dynamic batching, the streams begun together
    as one static batch (no stop strings or per-request seeds there); all streams' tokens / wall time."""

    def __init__(self, direct: Direct) -> None:
        self.og, self.prompt = direct.og, direct.prompt
        self.engine = self.og.Engine(direct.model)
        self.buffer = self.engine.create_event_buffer(64)

    def rate(self, streams: int, tokens: int) -> float:
        reqs = []
        for _ in range(streams):
            r = self.engine.create_request()
            turn = self.og.TurnOptions(r)
            turn.set_max_generated_tokens(tokens)
            turn.set_min_generated_tokens(tokens)
            r.begin_turn(self.prompt, turn)
            reqs.append(r)
        t0, n = time.perf_counter(), 0
        token_flag = int(self.og.EngineEventFlags.TOKEN)
        while self.engine.has_pending_requests():
            n += sum(1 for ev in self.engine.run(self.buffer) if int(ev.flags) & token_flag)
        rate = n / (time.perf_counter() - t0)
        for r in reqs:
            r.close()
        return rate


@contextlib.contextmanager
def _server(home: Path, backend: str, threads: int) -> Iterator[str]:
    import httpx

    from bench import loadgen

    port = loadgen.free_port()
    env = {**os.environ, "FF_HOME": str(home), "FF_NUM_THREADS": str(threads), "FF_NUM_PARALLEL": "4",
           "FF_BACKEND": backend, "FF_ACCESS_LOG": "false", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "ffcli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health/live").status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _served_stream(url: str, tokens: int) -> int:
    import httpx

    body = {"model": TAG, "prompt": PROMPT, "raw": True, "options": {"num_predict": tokens, "temperature": 0}}
    n = 0
    with httpx.stream("POST", url + "/api/generate", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line and not json.loads(line)["done"]:
                n += 1
    return n


def _rate(run: Callable[[], int], streams: int) -> float:
    """Tokens per second of ``streams`` concurrent runs (all tokens / wall time)."""
    counts = [0] * streams

    def one(i: int) -> None:
        counts[i] = run()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None, help="default: ff serve's own choice")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.threads is None:
        from ffruntime.settings import default_threads

        args.threads = default_threads()
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        _build(home, args.hf or _default_hf())
        folder = Path(tmp) / "int4"
        folder.mkdir()
        direct = Direct(_int4_folder(home, folder), args.threads)
        with (
            _server(home, "onnxruntime", args.threads) as onnx,
            _server(home, "llamacpp", args.threads) as gguf,
        ):
            sides: dict[str, Callable[[], int]] = {
                "direct": lambda: direct.stream(args.tokens),
                "served": lambda: _served_stream(onnx, args.tokens),
                "gguf": lambda: _served_stream(gguf, args.tokens),
            }
            for run in sides.values():
                run()  # load and warm
            batch = StaticBatch(direct)
            for _ in range(args.rounds):
                for streams in (1, 4):
                    for name, run in sides.items():
                        rows.setdefault(f"{name}-{streams}", []).append(_rate(run, streams))
                rows.setdefault("engine-4", []).append(batch.rate(4, args.tokens))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"SmolLM2-135M int4 (GenAI) and q4_0 (llama.cpp), threads {args.threads}, {args.tokens} tokens, "
          f"{args.rounds} rounds (medians, tok/s)")
    for streams in (1, 4):
        d, s, g = (med[f"{n}-{streams}"] for n in ("direct", "served", "gguf"))
        print(f"  {streams} stream(s): direct GenAI {d:7.1f}   ff serve int4 {s:7.1f}   "
              f"ff serve q4_0 {g:7.1f}   served/direct {s / d:.3f}   int4/q4_0 {s / g:.3f}")
    print(f"  GenAI's static batch of 4 (og.Engine, direct): {med['engine-4']:7.1f}   "
          f"ff serve 4 streams / static batch {med['served-4'] / med['engine-4']:.3f}")
    for k, v in rows.items():
        print(f"  {k}: " + ", ".join(f"{x:.1f}" for x in v))


if __name__ == "__main__":
    main()
