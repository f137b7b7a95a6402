"""What ``ff serve`` itself costs a request: its app with an instant embedding runtime, against a bare
ASGI app on the same uvicorn (the baseline, measured in the same run).

Both answer ``POST /v1/embeddings`` with one 384-float vector in base64, as the ``openai`` client asks
for it. The bare app reads the body and sends a canned answer; ff's app does all it does for a real
model (API keys and size guard, routing, JSON and pydantic validation, the scheduler's slot, metrics,
the disconnect watch, the answer's encoding) except the model run: its runtime (injected through
``create_app``'s loader, as the scheduler's tests do) returns a vector at once. The difference is
the server's own time a request, which a model must be large next to for ``served ≈ direct``.

Rounds alternate bare, ff, bare, ff so the shared machine's drift hits both; medians are printed, with
µs a request (1 connection: latency; 16: CPU-bound throughput) and ff / bare.

    python bench/serve_overhead.py [--home FF_HOME] [--seconds 3] [--rounds 3] [--client wrk|aiohttp]

``--home``: a FF_HOME whose store holds ``minilm-all:latest`` (any variant; only its name is
resolved); without it, ``modelfiles/minilm-onnx`` is built into a temp FF_HOME (12 s).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MODEL = "minilm-all:latest-int8-cpu"
SENTENCE = "The quick brown fox jumps over the lazy dog."
DIM = 384


def _vector() -> Any:
    import numpy as np

    return np.random.default_rng(0).random((1, DIM), dtype=np.float32)


def bare_app() -> Any:
    """The baseline: an ASGI callable that reads the body and sends a canned embedding answer."""
    vec = base64.b64encode(_vector().astype("<f4").tobytes()).decode()
    data = [{"object": "embedding", "index": 0, "embedding": vec}]
    usage = {"prompt_tokens": 12, "total_tokens": 12}
    answer = {"object": "list", "data": data, "model": MODEL, "usage": usage}
    body = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def ff_app() -> Any:
    """``ff serve``'s app (settings from FF_*), every model loaded as an instant embedding runtime."""
    from ffruntime.runtime import Capability, Embeddings
    from ffserve.app import create_app
    from ffserve.settings import Settings

    vectors = _vector()

    class Instant:
        parallel, memory_bytes, context_length = 128, 1, 512
        capabilities = frozenset({Capability.EMBED})

        async def embed(self, texts: Any, *, truncate: bool, cancel: Any) -> Embeddings:
            return Embeddings(vectors, 12)

        async def close(self) -> None:
            pass

    async def loader(variant: Any, files: Any, settings: Any) -> Any:
        return Instant()

    return create_app(Settings(), loader=loader)


def serve(kind: str, port: int) -> None:
    import uvicorn

    app = bare_app() if kind == "bare" else ff_app()
    # as ffserve.server.serve runs it: httptools, no access log
    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", log_level="warning", access_log=False)


def aiohttp_rate(url: str, body: str, connections: int, seconds: float) -> float:
    import aiohttp
    import numpy as np

    async def main() -> float:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as s:

            async def one() -> None:
                async with s.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    r.raise_for_status()
                    answer = await r.json()
                    np.frombuffer(base64.b64decode(answer["data"][0]["embedding"]), dtype=np.float32)

            done, end = 0, time.perf_counter() + seconds

            async def client() -> None:
                nonlocal done
                while time.perf_counter() < end:
                    await one()
                    done += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(connections)))
            return done / (time.perf_counter() - t0)

    return asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--client", choices=("wrk", "aiohttp"), default="wrk")
    ap.add_argument("--serve", choices=("bare", "ff"), help=argparse.SUPPRESS)  # the server subprocess
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    from bench import loadgen

    home = args.home
    if home is None:
        from bench.embed import build_minilm

        home = Path(tempfile.mkdtemp(prefix="ff-bench-overhead-"))
        build_minilm(home, "minilm-onnx")
    body = json.dumps({"model": MODEL, "input": [SENTENCE], "encoding_format": "base64"})
    env = {**os.environ, "FF_HOME": str(home), "FF_ACCESS_LOG": "false", "PYTHONPATH": str(REPO)}
    rows: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for kind in ("bare", "ff"):
            port = loadgen.free_port()
            cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}/v1/embeddings"
            try:
                for _ in range(100):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        time.sleep(0.1)
                for conns in (1, 16):
                    if args.client == "wrk":
                        loadgen.rate(url, [body], conns, 1)  # warm up (and load the model)
                        got = loadgen.rate(url, [body], conns, args.seconds)
                    else:
                        aiohttp_rate(url, body, conns, 1)
                        got = aiohttp_rate(url, body, conns, args.seconds)
                    rows.setdefault((kind, conns), []).append(got)
            finally:
                proc.terminate()
                proc.wait(30)
    print(f"POST /v1/embeddings, one sentence, client {args.client}, median of {args.rounds}×{args.seconds}s")
    for conns in (1, 16):
        bare, ff = (statistics.median(rows[(k, conns)]) for k in ("bare", "ff"))
        print(
            f"  {conns:>2} connection(s): bare uvicorn {bare:8.0f} req/s ({1e6 / bare:6.1f} µs)   "
            f"ff serve, instant model {ff:8.0f} req/s ({1e6 / ff:6.1f} µs)   "
            f"ff / bare {ff / bare:.2f}   ff's own {1e6 / ff - 1e6 / bare:6.1f} µs a request"
        )


if __name__ == "__main__":
    main()
