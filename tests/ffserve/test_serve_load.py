"""Overload and disconnects against the shared ``ff serve`` (FF_MAX_QUEUE=4, FF_NUM_PARALLEL=1)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from tests.ffserve.serve_testkit import Server

LONG = {"model": "smollm2", "prompt": "Once upon a time", "raw": True,
        "options": {"num_predict": 4000, "temperature": 1.0, "seed": 7}}


async def _round(url: str, n: int) -> list[httpx.Response]:
    body = {"model": "smollm2", "prompt": "Hello", "raw": True, "stream": False,
            "options": {"num_predict": 8}}
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n)) as client:
        return list(await asyncio.gather(*(client.post(url + "/api/generate", json=body) for _ in range(n))))


def test_overload_gives_200_or_503_and_memory_stays_flat(server: Server) -> None:
    queue_bound = 4
    rss = []
    for _ in range(5):
        answers = asyncio.run(_round(server.url, 4 * queue_bound))
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 503}, codes
        assert codes.count(200) >= 1 + queue_bound - 1 and codes.count(503) >= 1, codes
        for r in answers:
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1 and "FF_MAX_QUEUE" in r.json()["error"]
            else:
                assert r.json()["done"] is True
        rss.append(server.rss())
    assert server.proc.poll() is None
    assert rss[-1] - rss[1] < 16 * 2**20, rss  # round 1 warms caches; later rounds must not grow
    assert server.metric("ff:requests_rejected_total") >= 5


def _quick(server: Server) -> float:
    t0 = time.perf_counter()
    r = httpx.post(server.url + "/api/generate", timeout=60, json={
        "model": "smollm2", "prompt": "Hi", "raw": True, "stream": False, "options": {"num_predict": 1}})
    assert r.status_code == 200, r.text
    return time.perf_counter() - t0


def _wait_idle(server: Server) -> None:
    deadline = time.monotonic() + 5
    while server.metric("ff:num_requests_running") > 0:
        assert time.monotonic() < deadline, "the cancelled request still holds its slot"
        time.sleep(0.02)


def test_dropped_stream_frees_the_model_within_a_step(server: Server) -> None:
    _quick(server)  # loaded
    cancelled = server.metric("ff:requests_cancelled_total")
    generated = server.metric("ff:generation_tokens_total")
    with httpx.stream("POST", server.url + "/api/generate", json=LONG, timeout=60) as r:
        assert r.status_code == 200
        for i, _ in enumerate(r.iter_lines()):
            if i == 5:
                break
    _wait_idle(server)
    assert _quick(server) < 2.0  # 4000 tokens would take far longer: the stream was stopped
    assert server.metric("ff:requests_cancelled_total") == cancelled + 1
    assert server.metric("ff:request_success_total", finished_reason="cancelled") >= 1
    assert server.metric("ff:generation_tokens_total") - generated < 200


def test_dropped_non_streaming_and_queued_requests_are_cancelled(server: Server) -> None:
    _quick(server)
    cancelled = server.metric("ff:requests_cancelled_total")
    body = {**LONG, "stream": False}
    with httpx.stream("POST", server.url + "/api/generate", json=LONG, timeout=60) as running:
        next(running.iter_lines())  # holds the only slot
        with contextlib.suppress(httpx.TimeoutException):  # queued behind it, then dropped
            httpx.post(server.url + "/api/generate", json=body, timeout=0.5)
    with contextlib.suppress(httpx.TimeoutException):  # runs, then dropped mid-generation
        httpx.post(server.url + "/api/generate", json=body, timeout=1.0)
    _wait_idle(server)
    deadline = time.monotonic() + 5
    while server.metric("ff:requests_cancelled_total") < cancelled + 3:
        assert time.monotonic() < deadline, server.metric("ff:requests_cancelled_total") - cancelled
        time.sleep(0.05)
    assert _quick(server) < 2.0
