"""``ff serve`` against llama.cpp's ``llama-server``, each at its own defaults, as a new user starts them.

``ff serve`` runs with no ``FF_*`` setting but ``FF_HOME`` (where the benchmark stored the model);
``llama-server`` with only ``-m MODEL --port PORT``. ``OMP_*`` variables are removed for both. With
``--threads N`` both are given N threads (``FF_NUM_THREADS=N``, ``-t N``) and nothing else.

Three measurements, each in one run, rounds alternating between the servers (ff, llama-server, ff, …)
so the drifting load of a shared machine hits both; medians of paired rounds and their ratios printed:

- ``throughput`` (``bench/serve.py --concurrent --defaults``): 1 / 4 / 8 concurrent streams of
  ``--tokens`` tokens (distinct raw prompts, greedy), aggregate completion tokens/s from the first
  request to the last token, for each GGUF (Q4_1, Q8_0, Q4_0 of SmolLM2 by default: the package's Q4_1,
  and Q8_0 / Q4_0 made from it by ``llama-quantize --allow-requantize``), with the p50 / p99 gap between
  a stream's tokens as its client sees them;
- ``contention`` (``--contention``): a CPU-bound process pinned to core 0 (``taskset -c 0``) runs
  throughout; single-stream tokens/s of ``ff serve`` at its defaults, of ``ff serve`` with
  ``FF_NUM_THREADS=1``, and of ``llama-server`` at its defaults;
- ``long prompt`` (``--long-prompt``): 3 streams generating; their inter-token gaps alone (p50), then
  while a request with a ~1,500-token prompt is admitted (p99 of the gaps from its arrival to its first
  token, and over the whole run), and the long prompt's time to its first token (what bounding the
  others' gaps costs it).

``llama-server`` and ``llama-quantize`` are built once from the llama-cpp-python source distribution with
the flags of our own build (:mod:`bench.build`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.build import BENCH_CACHE, VERSION, library_flags, llama_tool
from bench.serve_concurrent import STORY, _port, _wait, system_prompt

REPO = Path(__file__).resolve().parent.parent
STREAMS = (1, 4, 8)
QUANTS = ("Q4_1", "Q8_0", "Q4_0")


@dataclass
class Server:
    name: str
    api: str  # "ff" (Ollama /api/generate) or "ls" (llama-server /completion)
    url: str
    proc: subprocess.Popen[bytes]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("FF_", "OMP_", "GOMP_"))}


def start_ff(home: Path, name: str, threads: int | None = None) -> Server:
    port = _port()
    env = {**_clean_env(), "FF_HOME": str(home), "PYTHONPATH": str(REPO)}
    if threads:
        env["FF_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-m", "ffcli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait(url, "/health/live", proc)
    return Server(name, "ff", url, proc)


def start_ls(gguf: Path, name: str, threads: int | None = None) -> Server:
    port = _port()
    cmd = [str(llama_tool("llama-server")), "-m", str(gguf), "--port", str(port)]
    if threads:
        cmd += ["-t", str(threads)]
    proc = subprocess.Popen(cmd, env=_clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait(url, "/health", proc)
    return Server(name, "ls", url, proc)


@contextmanager
def running(*servers: Server) -> Iterator[None]:
    try:
        yield
    finally:
        for s in servers:
            s.proc.terminate()
            s.proc.wait(timeout=60)


async def stream(client: httpx.AsyncClient, s: Server, prompt: str, n: int) -> tuple[int, list[float]]:
    """(completion tokens, arrival time of each token chunk) of one streamed greedy request."""
    stamps: list[float] = []
    count = 0
    if s.api == "ff":
        options = {"num_predict": n, "temperature": 0}
        body = {"model": "bench", "prompt": prompt, "raw": True, "options": options}
        async with client.stream("POST", s.url + "/api/generate", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line:
                    msg = json.loads(line)
                    if msg["done"]:
                        count = int(msg.get("eval_count", 0))
                    elif msg.get("response"):
                        stamps.append(time.perf_counter())
        return count, stamps
    body = {"prompt": prompt, "n_predict": n, "temperature": 0, "stream": True, "cache_prompt": True}
    async with client.stream("POST", s.url + "/completion", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                msg = json.loads(line[6:])
                if msg.get("stop"):
                    count = int(msg.get("tokens_predicted", 0))
                elif msg.get("content"):
                    stamps.append(time.perf_counter())
    return count, stamps


def gaps(stamps: list[float], since: float = 0.0, until: float = float("inf")) -> list[float]:
    return [b - a for a, b in itertools.pairwise(stamps) if since <= b <= until]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def burst(s: Server, streams: int, tokens: int) -> tuple[float, list[float]]:
    """Aggregate tokens/s of ``streams`` concurrent requests, and all their inter-token gaps."""
    async with httpx.AsyncClient(timeout=600) as client:
        t0 = time.perf_counter()
        calls = [stream(client, s, STORY[i % len(STORY)], tokens) for i in range(streams)]
        results = await asyncio.gather(*calls)
    end = max(st[-1] for _, st in results if st)
    return sum(n for n, _ in results) / (end - t0), [g for _, st in results for g in gaps(st)]


def quantized(source: Path, quants: list[str]) -> dict[str, Path]:
    """The benchmark's GGUFs by quantization: ``source`` (Q4_1) and the others made from it once."""
    out = {"Q4_1": source} if "Q4_1" in quants else {}
    folder = BENCH_CACHE / "quants"
    folder.mkdir(parents=True, exist_ok=True)
    for q in [q for q in quants if q != "Q4_1"]:
        path = folder / f"{source.stem}.{q}.gguf"
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            tool = str(llama_tool("llama-quantize"))
            cmd = [tool, "--allow-requantize", str(source), str(tmp), q]
            subprocess.run(cmd, check=True, capture_output=True)
            tmp.replace(path)
        out[q] = path
    return out


def _ratio_line(label: str, ff: list[float], ls: list[float], unit: str = "tok/s") -> str:
    ratio = statistics.median(a / b for a, b in zip(ff, ls, strict=True))
    rounds = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(ff, ls, strict=True))
    return (f"  {label}: ff serve {statistics.median(ff):6.1f} {unit}   llama-server "
            f"{statistics.median(ls):6.1f} {unit}   ratio {ratio:.2f}   (rounds ff/ls: {rounds})")


def _header(what: str, tokens: int, rounds: int, threads: int | None) -> None:
    given = f"both given {threads} threads" if threads else "both at their defaults"
    print(f"{what}: {given}; {tokens} tokens per stream, {rounds} paired rounds (medians); "
          f"llama-server {VERSION} built with {' '.join(library_flags())}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    print(f"  command: python {' '.join(shlex.quote(a) for a in sys.argv)}")


def throughput(gguf: Path, tokens: int, rounds: int, threads: int | None, quants: list[str]) -> None:
    from bench.stored import store_model

    _header("throughput", tokens, rounds, threads)
    for path in quantized(gguf, quants).values():
        with tempfile.TemporaryDirectory() as tmp:
            store_model(Path(tmp), path)
            ff, ls = start_ff(Path(tmp), "ff", threads), start_ls(path, "ls", threads)
            rows: dict[tuple[str, int], list[float]] = {}
            itl: dict[tuple[str, int], list[float]] = {}
            with running(ff, ls):
                for s in (ff, ls):
                    asyncio.run(burst(s, 2, 8))  # load and warm
                for _ in range(rounds):
                    for n in STREAMS:
                        for s in (ff, ls):
                            speed, g = asyncio.run(burst(s, n, tokens))
                            rows.setdefault((s.name, n), []).append(speed)
                            itl.setdefault((s.name, n), []).extend(g)
                ps = httpx.get(ff.url + "/api/ps").json()["models"]
        print(f" {path.name} (ff chose {ps[0].get('num_parallel') if ps else '?'} slots)")
        for n in STREAMS:
            print(_ratio_line(f"{n} streams", rows[("ff", n)], rows[("ls", n)]))
            print("             inter-token ms p50/p99: ff serve "
                  f"{pct(itl[('ff', n)], 50) * 1e3:.1f}/{pct(itl[('ff', n)], 99) * 1e3:.1f}   llama-server "
                  f"{pct(itl[('ls', n)], 50) * 1e3:.1f}/{pct(itl[('ls', n)], 99) * 1e3:.1f}")


def _busy_core() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])


def contention(gguf: Path, tokens: int, rounds: int, with_ls: bool = True) -> None:
    from bench.stored import store_model

    _header("contention (a CPU-bound process pinned to core 0 throughout)", tokens, rounds, None)
    with tempfile.TemporaryDirectory() as tmp:
        store_model(Path(tmp), gguf)
        servers = [start_ff(Path(tmp), "ff"), start_ff(Path(tmp), "ff1", threads=1)]
        servers += [start_ls(gguf, "ls")] if with_ls else []
        busy = _busy_core()
        rows: dict[str, list[float]] = {s.name: [] for s in servers}
        try:
            with running(*servers):
                for s in servers:
                    asyncio.run(burst(s, 1, 32))  # load, warm, and let ff's thread choice settle
                for _ in range(rounds):
                    for s in servers:
                        rows[s.name].append(asyncio.run(burst(s, 1, tokens))[0])
                metrics = httpx.get(servers[0].url + "/metrics").text
        finally:
            busy.terminate()
            busy.wait()
    threads = [ln for ln in metrics.splitlines() if ln.startswith("ff:runtime_thread")]
    ff, ff1, ls = rows["ff"], rows["ff1"], rows.get("ls") or [float("nan")] * len(rows["ff"])
    ratio = statistics.median(a / b for a, b in zip(ff, ff1, strict=True))
    print(f"  single stream: ff serve (defaults) {statistics.median(ff):.1f} tok/s, "
          f"ff serve FF_NUM_THREADS=1 {statistics.median(ff1):.1f} tok/s: ratio {ratio:.2f} (target >= 0.9); "
          f"llama-server (defaults) {statistics.median(ls):.1f} tok/s" + ("" if with_ls else " (not run)"))
    per_round = zip(ff, ff1, ls, strict=True)
    print("  rounds ff/ff1/ls: " + ", ".join(f"{a:.1f}/{b:.1f}/{c:.1f}" for a, b, c in per_round))
    print("  ff serve's choice at the end: " + "; ".join(threads))


async def _long(s: Server, tokens: int, round_no: int, with_long: bool) -> tuple[list[float], list[float]]:
    """Gaps of 3 streams (all, and those inside the long prompt's admission window, whose length is the
    long prompt's time to its first token: the window's two ends are its first two values)."""
    async with httpx.AsyncClient(timeout=600) as client:
        runs = [asyncio.create_task(stream(client, s, STORY[i], tokens)) for i in range(3)]
        window = (0.0, 0.0)
        if with_long:
            await asyncio.sleep(1.0)
            t0 = time.perf_counter()
            prompt = system_prompt(1000 + round_no) + "Question: what is rule 5?"
            _, stamps = await stream(client, s, prompt, 1)
            window = (t0, stamps[0] if stamps else time.perf_counter())
        results = await asyncio.gather(*runs)
    every = [g for _, st in results for g in gaps(st)]
    inside = [g for _, st in results for g in gaps(st, *window)] if with_long else []
    return every, [window[1] - window[0], *inside] if with_long else []


def long_prompt(gguf: Path, tokens: int, rounds: int, with_ls: bool = True) -> None:
    from bench.stored import store_model

    _header("long prompt admitted while 3 streams decode", tokens, rounds, None)
    with tempfile.TemporaryDirectory() as tmp:
        store_model(Path(tmp), gguf)
        servers = [start_ff(Path(tmp), "ff")] + ([start_ls(gguf, "ls")] if with_ls else [])
        out: dict[tuple[str, str], list[float]] = {}
        with running(*servers):
            for s in servers:
                asyncio.run(burst(s, 3, 16))
            for r in range(rounds):
                for s in servers:
                    alone, _ = asyncio.run(_long(s, tokens, r, False))
                    every, (first, *inside) = asyncio.run(_long(s, tokens, r, True))
                    out.setdefault((s.name, "alone"), []).extend(alone)
                    out.setdefault((s.name, "every"), []).extend(every)
                    out.setdefault((s.name, "inside"), []).extend(inside)
                    out.setdefault((s.name, "first"), []).append(first)
    for name, label in (("ff", "ff serve"), ("ls", "llama-server"))[: 2 if with_ls else 1]:
        p50 = pct(out[(name, "alone")], 50)
        p99_in, p99_all = pct(out[(name, "inside")], 99), pct(out[(name, "every")], 99)
        p99_alone = pct(out[(name, "alone")], 99)
        print(f"  {label}: p50 alone {p50 * 1e3:.1f} ms (p99 {p99_alone * 1e3:.1f}); "
              f"with the long prompt p99 {p99_in * 1e3:.1f} ms "
              f"while it is admitted ({p99_in / p50:.1f}× p50 alone, target <= 3), {p99_all * 1e3:.1f} ms "
              "over the run "
              f"({len(out[(name, 'inside')])} gaps inside the window); the long prompt's first token after "
              f"{statistics.median(out[(name, 'first')]):.1f} s (median)")
