"""API keys, body limits, readiness, and what `ff serve` imports, each on a server of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from ffserve.app import create_app
from ffserve.settings import Settings
from tests.ffserve.serve_testkit import ROOT, Server, start_server

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def locked(ff_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"FF_API_KEYS": f"other,{KEY}", "FF_MAX_BODY_BYTES": "2000", "FF_MODELS": "tiny"}
    with start_server(ff_home, tmp_path_factory.mktemp("locked"), **env) as s:
        yield s


def _routes() -> list[tuple[str, str]]:
    app = create_app(Settings())
    out = []
    for r in app.routes:
        assert isinstance(r, Route)
        for method in sorted(r.methods or []):
            if method != "HEAD":
                out.append((method, r.path.replace("{model:path}", "smollm2:latest")))
    return out


def test_every_route_but_health_needs_the_key(locked: Server) -> None:
    """Health probes (ours and OIP v2's, which Kubernetes and KServe call without credentials) are open."""
    routes = _routes()
    assert len(routes) >= 20
    for method, path in routes:
        r = httpx.request(method, locked.url + path, json={"model": "smollm2"}, timeout=30)
        if path.startswith(("/health/", "/v2/health/")):
            assert r.status_code in (200, 503), (path, r.status_code)
            continue
        assert r.status_code == 401, (method, path, r.status_code)
        err = r.json()["error"]
        assert (err["message"] if path.startswith("/v1/") else err).startswith("a valid API key")
        bad = httpx.request(method, locked.url + path, headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert bad.status_code == 401
    ok = httpx.get(locked.url + "/api/tags", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and ok.json()["models"]


def test_the_anthropic_clients_x_api_key(locked: Server) -> None:
    """Anthropic's SDK sends its key as ``x-api-key``; a wrong one is a 401 in Anthropic's shape."""
    import anthropic

    hi: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hi"}]
    ok = anthropic.Anthropic(base_url=locked.url, api_key=KEY, max_retries=0)
    assert ok.messages.count_tokens(model="tiny", messages=hi).input_tokens > 1
    bad = anthropic.Anthropic(base_url=locked.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        bad.messages.count_tokens(model="tiny", messages=hi)
    assert isinstance(err.value.body, dict) and err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "authentication_error"
    assert httpx.get(locked.url + "/api/tags", headers={"x-api-key": KEY}).status_code == 200
    assert httpx.get(locked.url + "/api/tags", headers={"x-api-key": ""}).status_code == 401


def test_body_limit_and_readiness(locked: Server) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    big = {"model": "tiny", "prompt": "x" * 5000, "stream": False}
    r = httpx.post(locked.url + "/api/generate", json=big, headers=auth)
    assert r.status_code == 413 and "2000 bytes" in r.json()["error"]
    deadline = time.monotonic() + 60
    while (ready := httpx.get(locked.url + "/health/ready")).status_code != 200:
        assert ready.status_code == 503 and "loading" in ready.json()["error"]
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.2)
    assert ready.json()["models"] == ["tiny:latest"]
    ps = httpx.get(locked.url + "/api/ps", headers=auth).json()["models"]
    assert [m["name"] for m in ps] == ["tiny:latest"] and ps[0]["expires_at"].startswith("9999")


def test_probes_never_load_a_model(ff_home: Path, tmp_path: Path) -> None:
    with start_server(ff_home, tmp_path, FF_MODELS="no-such-model") as s:
        for _ in range(5):
            assert httpx.get(s.url + "/health/live").status_code == 200
            r = httpx.get(s.url + "/health/ready")
            assert r.status_code == 503 and "no-such-model" in r.json()["error"]
        assert httpx.get(s.url + "/api/ps").json() == {"models": []}
        assert s.metric("ff:model_loads_total") == 0


def test_serving_a_gguf_imports_no_torch_transformers_or_tvm(ff_home: Path) -> None:
    code = """
import asyncio, json, sys
from ffserve.app import create_app
from ffserve.settings import Settings
from ffruntime.runtime import GenerationRequest, Token
app = create_app(Settings(num_threads=2, quantize="q8_0"))
sched = app.state.ff.scheduler
async def main():
    model = await sched.get("smollm2")
    req = GenerationRequest(prompt="Hi", options={"num_predict": 2})
    text = [e.text async for e in model.runtime.generate(req) if isinstance(e, Token)]
    await sched.close()
    return text
assert asyncio.run(main())
print(json.dumps(sorted(m for m in ("torch", "transformers", "tvm", "ffbuild") if m in sys.modules)))
"""
    env = {"FF_HOME": str(ff_home), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_num_parallel_runs_two_requests_at_once(ff_home: Path, tmp_path: Path) -> None:
    import threading

    with start_server(ff_home, tmp_path, FF_NUM_PARALLEL="2") as s:
        body = {"model": "smollm2", "prompt": "Once upon a time", "raw": True, "stream": False,
                "options": {"num_predict": 48, "temperature": 0}}
        alone = httpx.post(s.url + "/api/generate", json=body, timeout=120).json()["response"]
        results: list[str] = []
        peak = [0.0]

        def ask() -> None:
            results.append(httpx.post(s.url + "/api/generate", json=body, timeout=120).json()["response"])

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak[0] = max(peak[0], s.metric("ff:num_requests_running"))
            time.sleep(0.01)
        assert peak[0] == 2  # both slots busy at once
        assert results == [alone, alone]  # each slot has its own context: same greedy answer
        assert [m["num_parallel"] for m in httpx.get(s.url + "/api/ps").json()["models"]] == [2]


def test_hostile_bodies_are_400s_not_500s(server: Server) -> None:
    """Out-of-vocabulary context ids, deeply nested JSON and infinite keep_alive: each a JSON 400."""
    cases = [
        {"model": "smollm2", "prompt": "Hi", "context": [1, 999_999_999], "stream": False},
        {"model": "smollm2", "prompt": "Hi", "keep_alive": "inf", "stream": False},
    ]
    for body in cases:
        r = httpx.post(server.url + "/api/generate", json=body, timeout=60)
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert isinstance(r.json()["error"], str)
    deep = "[" * 100_000 + "]" * 100_000
    r = httpx.post(server.url + "/api/generate", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nests too deeply" in r.json()["error"]
    ok = httpx.post(server.url + "/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False,
                                                       "options": {"num_predict": 2}}, timeout=60)
    assert ok.status_code == 200  # the model still serves after the rejected requests
