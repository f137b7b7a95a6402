"""Strict structured output through ``ff serve``: is every answer valid, and what does a schema cost?

Validity: every schema of ``bench/data/schemas.json`` × ``--seeds`` seeds × temperatures 0 and 1, asked
through ``/v1/chat/completions`` (``response_format`` json_schema, ``strict``) and ``/api/chat``
(``format``: the schema), ``--workers`` requests at a time. An answer counts as valid when it parses as
JSON and validates against its schema (jsonschema, with format checking). Every failure is printed.

Cost: decode tokens/s of the same prompt free and with a schema, in alternating rounds on the same
server (``/api/chat``, greedy, ``num_predict`` tokens both; the schema's string has a ``minLength``
longer than that so neither ends early), as the server measures it (``eval_count / eval_duration``);
prints the median of the paired ratios (target ≥ 0.9).

    python bench/constraints.py [--gguf PATH] [--seeds 10] [--max-tokens 256] [--workers 4] [--rounds 7]

tests/ffserve/test_serve_constraints.py runs a sample of the same corpus with the same checks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "bench" / "data" / "schemas.json"
ROUTES = ("openai", "ollama")
SYSTEM = "You answer with JSON only."


def corpus() -> list[dict[str, Any]]:
    """The schemas: each ``{"name", "prompt", "schema"}``."""
    items: list[dict[str, Any]] = json.loads(CORPUS.read_text(encoding="utf-8"))["schemas"]
    return items


def invalid(schema: dict[str, Any], text: str) -> str | None:
    """Why ``text`` is not a JSON document valid for ``schema``; None when it is."""
    import jsonschema

    try:
        doc = json.loads(text)
    except ValueError as exc:
        return f"not JSON ({exc}): {text[:200]!r}"
    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(doc), key=str)
    return f"{errors[0].message} in {text[:200]!r}" if errors else None


def ask(client: httpx.Client, url: str, model: str, route: str, item: dict[str, Any], seed: int,
        temperature: float, max_tokens: int) -> tuple[str, str]:
    """(answer text, finish reason) of ``item``'s prompt asked with its schema through ``route``."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": item["prompt"]}]
    if route == "openai":
        body = {
            "model": model, "messages": messages, "seed": seed, "temperature": temperature,
            "max_tokens": max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": item["name"], "strict": True, "schema": item["schema"]},
            },
        }
        r = client.post(f"{url}/v1/chat/completions", json=body)
        r.raise_for_status()
        choice = r.json()["choices"][0]
        return choice["message"]["content"], choice["finish_reason"]
    body = {
        "model": model, "messages": messages, "stream": False, "format": item["schema"],
        "options": {"seed": seed, "temperature": temperature, "num_predict": max_tokens},
    }
    r = client.post(f"{url}/api/chat", json=body)
    r.raise_for_status()
    data = r.json()
    return data["message"]["content"], data["done_reason"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serving(gguf: Path, parallel: int) -> Iterator[str]:
    """A ``ff serve`` subprocess with ``gguf`` stored as ``bench:latest``; yields its URL."""
    from bench.stored import store_model

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        store_model(home, gguf)
        port = free_port()
        env = {**os.environ, "FF_HOME": str(home), "FF_NUM_CTX": "2048", "FF_NUM_PARALLEL": str(parallel),
               "FF_ACCESS_LOG": "false", "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "ffcli", "serve", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(timeout=10) as c:
                for _ in range(600):
                    try:
                        if c.get(url + "/health/live").status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def validity(url: str, seeds: int, max_tokens: int, workers: int) -> tuple[int, int]:
    """(valid, asked) over the corpus × seeds × temperatures 0, 1 × both routes; failures printed."""
    # Seed-major: every prefix of the run covers the whole corpus, and progress lines say how far it got.
    jobs = [(route, item, seed, temp) for seed in range(seeds) for item in corpus()
            for temp in (0.0, 1.0) for route in ROUTES]
    valid, counts = 0, {r: [0, 0] for r in ROUTES}
    t0 = time.perf_counter()
    with httpx.Client(timeout=600) as client, concurrent.futures.ThreadPoolExecutor(workers) as pool:

        def one(job: tuple[str, dict[str, Any], int, float]) -> str | None:
            route, item, seed, temp = job
            text, reason = ask(client, url, "bench", route, item, seed, temp, max_tokens)
            why = invalid(item["schema"], text)
            return None if why is None else f"{route} {item['name']} seed {seed} T={temp} ({reason}): {why}"

        for done, (job, why) in enumerate(zip(jobs, pool.map(one, jobs), strict=True), 1):
            counts[job[0]][1] += 1
            if why is None:
                valid += 1
                counts[job[0]][0] += 1
            else:
                print("  INVALID", why, flush=True)
            if done % (2 * len(corpus())) == 0 or done == len(jobs):
                print(f"  {valid}/{done} valid after {time.perf_counter() - t0:.0f} s", flush=True)
    took = time.perf_counter() - t0
    print(f"validity: {valid}/{len(jobs)} valid ({len(corpus())} schemas × {seeds} seeds × T 0,1 × routes) "
          f"in {took:.0f} s; " + ", ".join(f"{r} {v}/{n}" for r, (v, n) in counts.items()))
    return valid, len(jobs)


COST_PROMPT = "Write a long story about a lighthouse keeper, as JSON with a title and the story."
COST_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "story": {"type": "string", "minLength": 2000},
    },
    "required": ["title", "story"],
    "additionalProperties": False,
}


def _decode_rate(client: httpx.Client, url: str, schema: dict[str, Any] | None, tokens: int) -> float:
    body: dict[str, Any] = {
        "model": "bench", "stream": False, "messages": [{"role": "user", "content": COST_PROMPT}],
        "options": {"temperature": 0, "num_predict": tokens},
    }
    if schema is not None:
        body["format"] = schema
    data = client.post(f"{url}/api/chat", json=body).raise_for_status().json()
    return float(data["eval_count"]) / (data["eval_duration"] / 1e9)


def cost(url: str, rounds: int, tokens: int) -> float:
    """The median ratio of decode tokens/s with a schema to without, alternating rounds."""
    free, guided = [], []
    with httpx.Client(timeout=600) as client:
        _decode_rate(client, url, COST_SCHEMA, 8)  # warm: the tokenizer bridge is built once
        for _ in range(rounds):
            free.append(_decode_rate(client, url, None, tokens))
            guided.append(_decode_rate(client, url, COST_SCHEMA, tokens))
    ratio = statistics.median(g / f for f, g in zip(free, guided, strict=True))
    print(f"decode, {tokens} tokens, {rounds} alternating rounds (medians): "
          f"free {statistics.median(free):.1f} "
          f"tok/s, with a schema {statistics.median(guided):.1f} tok/s; ratio {ratio:.3f} (target ≥ 0.9)",
          flush=True)
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=7, help="cost rounds; 0: validity only")
    ap.add_argument("--cost-tokens", type=int, default=128)
    ap.add_argument("--skip-validity", action="store_true")
    args = ap.parse_args()
    from bench.serve import _default_gguf

    gguf = args.gguf or _default_gguf()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still stops its server
    with serving(gguf, args.workers) as url:
        if args.rounds > 0:
            cost(url, args.rounds, args.cost_tokens)
        if not args.skip_validity:
            valid, asked = validity(url, args.seeds, args.max_tokens, args.workers)
            if valid != asked:
                raise SystemExit(1)


if __name__ == "__main__":
    main()
