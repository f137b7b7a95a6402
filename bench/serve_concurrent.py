"""Concurrent serving: ``ff serve`` against llama.cpp's own ``llama-server``, same GGUF, same run.

Both servers get the same threads, parallel slots, context per slot and OMP_WAIT_POLICY. For 1, 4 and 8
concurrent streams (distinct raw prompts, greedy, ``--tokens`` each) a round measures the aggregate
tokens/s (all completion tokens / wall time from the first request to the last token); rounds alternate
ff, llama-server, ff, … so the shared machine's drifting load hits both. Then (first two rounds) time
to first token with a ~1,500-token shared system prompt: a cold request, then a second one with the
same system prompt and another question (prefix reuse), per server. Medians of paired rounds and
their ratios are printed. A third server, ``ff serve`` on the library as built before issue 10
(``GGML_NATIVE=ON`` with the machine's GCC, extra buffers off; ``bench.build.native_library``, loaded
through ``LLAMA_CPP_LIB_PATH``), runs the single-stream rounds: the fast-kernel build's gain.

``llama-server`` is built (once, for this benchmark only, never installed) from the llama-cpp-python
source distribution pinned by ``.ci/setup``, with the CMake flags recorded in the installed library's
``ff-build.json`` (the same compiler and flags as our build), under ``~/.cache/ferrousforge-bench``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.build import VERSION

REPO = Path(__file__).resolve().parent.parent
NUM_CTX = 2048
STREAMS = (1, 4, 8)
STORY = [f"Story number {i}: once upon a time, in a land far away, there" for i in range(8)]


def llama_server() -> Path:
    """The benchmark's ``llama-server`` binary, built on first use."""
    from bench.build import llama_tool

    return llama_tool("llama-server")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, path: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited ({proc.returncode})")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url}: not ready")


def start_ff(
    home: Path, threads: int, parallel: int, extra_env: dict[str, str] | None = None
) -> tuple[str, subprocess.Popen[bytes]]:
    port = _port()
    env = {**os.environ, "FF_HOME": str(home), "FF_NUM_THREADS": str(threads), "FF_NUM_CTX": str(NUM_CTX),
           "FF_NUM_PARALLEL": str(parallel), "FF_ACCESS_LOG": "false", "PYTHONPATH": str(REPO),
           **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "ffcli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait(url, "/health/live", proc)
    return url, proc


def start_llama_server(gguf: Path, threads: int, parallel: int) -> tuple[str, subprocess.Popen[bytes]]:
    port = _port()
    cmd = [str(llama_server()), "-m", str(gguf), "--port", str(port), "-t", str(threads), "-tb", str(threads),
           "-np", str(parallel), "-c", str(NUM_CTX * parallel), "-fa", "off", "--no-webui"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait(url, "/health", proc)
    return url, proc


async def _ff(client: httpx.AsyncClient, url: str, prompt: str, n: int) -> tuple[float, int, float]:
    """(time of the first token, completion tokens, time of the last) for one streamed request."""
    body = {"model": "bench", "prompt": prompt, "raw": True, "options": {"num_predict": n, "temperature": 0}}
    first, count = 0.0, 0
    async with client.stream("POST", url + "/api/generate", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line:
                continue
            msg = json.loads(line)
            first = first or time.perf_counter()
            if msg["done"]:
                count = int(msg.get("eval_count", 0))
    return first, count, time.perf_counter()


async def _ls(client: httpx.AsyncClient, url: str, prompt: str, n: int) -> tuple[float, int, float]:
    body = {"prompt": prompt, "n_predict": n, "temperature": 0, "stream": True, "cache_prompt": True}
    first, count = 0.0, 0
    async with client.stream("POST", url + "/completion", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            msg = json.loads(line[6:])
            first = first or time.perf_counter()
            if msg.get("stop"):
                count = int(msg.get("tokens_predicted", 0))
    return first, count, time.perf_counter()


async def burst(kind: str, url: str, streams: int, tokens: int) -> float:
    """Aggregate completion tokens/s of ``streams`` concurrent requests."""
    call = _ff if kind == "ff" else _ls
    async with httpx.AsyncClient(timeout=600) as client:
        t0 = time.perf_counter()
        calls = [call(client, url, STORY[i % len(STORY)], tokens) for i in range(streams)]
        results = await asyncio.gather(*calls)
    return sum(r[1] for r in results) / (max(r[2] for r in results) - t0)


def system_prompt(round_no: int) -> str:
    facts = " ".join(f"Rule {i}: answer politely, briefly and truthfully about topic {i}."
                     for i in range(82))
    return f"Session {round_no}. You are a careful assistant. {facts}\n"


async def shared_prefix(kind: str, url: str, round_no: int) -> tuple[float, float]:
    """TTFT (ms) of a cold request with a long system prompt, then of one sharing it."""
    call = _ff if kind == "ff" else _ls
    system = system_prompt(round_no)
    out = []
    async with httpx.AsyncClient(timeout=600) as client:
        for question in ("What is rule 3?", "What is rule 7?"):
            t0 = time.perf_counter()
            first, _, _ = await call(client, url, system + "Question: " + question + "\nAnswer:", 4)
            out.append((first - t0) * 1000)
    return out[0], out[1]


def _prompt_tokens(gguf: Path) -> int:
    from ffruntime.llamacpp.eval import LlamaEval

    with LlamaEval(gguf, threads=1) as m:
        return len(m.tokenize(system_prompt(0)))


def run_concurrent(gguf: Path, threads: int, tokens: int, rounds: int, policy: str, parallel: int) -> None:
    from bench.build import library_flags, native_library
    from bench.stored import store_model

    os.environ["OMP_WAIT_POLICY"] = policy
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        store_model(home, gguf)
        # ff serve on the library as it was built before issue 10 (native GCC, extra buffers off)
        before = {"LLAMA_CPP_LIB_PATH": str(native_library()), "FF_LLAMA_EXTRA_BUFFERS": "0"}
        servers = {"ff": start_ff(home, threads, parallel), "ls": start_llama_server(gguf, threads, parallel),
                   "before": start_ff(home, threads, parallel, before)}
        api = {"ff": "ff", "ls": "ls", "before": "ff"}  # which request shape each server takes
        try:
            for kind, (url, _) in servers.items():  # load and warm
                asyncio.run(burst(api[kind], url, 2, 8))
            rows: dict[tuple[str, int], list[float]] = {}
            ttft: dict[str, list[tuple[float, float]]] = {"ff": [], "ls": []}
            for r in range(rounds):
                for streams in STREAMS:
                    for kind, (url, _) in servers.items():
                        if kind == "before" and streams != 1:
                            continue
                        speed = asyncio.run(burst(api[kind], url, streams, tokens))
                        rows.setdefault((kind, streams), []).append(speed)
                if r < 2:  # each cold long prompt takes seconds: two rounds are enough for TTFT
                    for kind in ("ff", "ls"):
                        ttft[kind].append(asyncio.run(shared_prefix(kind, servers[kind][0], r + 1)))
        finally:
            for _, proc in servers.values():
                proc.terminate()
                proc.wait(timeout=60)
    print(f"model {gguf.name}, threads {threads}, {parallel} slots × {NUM_CTX} ctx, "
          f"OMP_WAIT_POLICY={policy}, "
          + (f"GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}, " if "GOMP_SPINCOUNT" in os.environ else "")
          + f"{tokens} tokens per stream, {rounds} paired rounds (medians); llama-server {VERSION} with "
          + " ".join(library_flags()))
    for streams in STREAMS:
        ff, ls = rows[("ff", streams)], rows[("ls", streams)]
        ratio = statistics.median(a / b for a, b in zip(ff, ls, strict=True))
        print(f"  {streams} streams: ff serve {statistics.median(ff):6.1f} tok/s   llama-server "
              f"{statistics.median(ls):6.1f} tok/s   ratio {ratio:.2f}   (rounds ff/ls: "
              + ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(ff, ls, strict=True)) + ")")
    fast, slow = rows[("ff", 1)], rows[("before", 1)]
    gain = statistics.median(a / b for a, b in zip(fast, slow, strict=True))
    print(f"  single stream, this build / the library built before issue 10 (GGML_NATIVE=ON, GCC, extra "
          f"buffers off), both through ff serve: {statistics.median(fast):.1f} / "
          f"{statistics.median(slow):.1f} tok/s, ratio {gain:.2f}")
    n_sys = _prompt_tokens(gguf)
    for kind, name in (("ff", "ff serve"), ("ls", "llama-server")):
        cold = statistics.median(a for a, _ in ttft[kind])
        warm = statistics.median(b for _, b in ttft[kind])
        speedup = statistics.median(a / b for a, b in ttft[kind])
        print(f"  TTFT, {n_sys}-token shared system prompt, {name}: first {cold:.0f} ms, "
              f"second {warm:.0f} ms, {speedup:.1f}× faster")


def main() -> None:
    print(llama_server())


if __name__ == "__main__":
    main()
