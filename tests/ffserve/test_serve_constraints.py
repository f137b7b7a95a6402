"""Strict structured output through a running ``ff serve`` with SmolLM2: every answer valid.

A sample of bench/constraints.py's corpus (the same data file, the same request shapes and checks):
8 schemas × 2 seeds × temperatures 0 and 1, half through ``/v1/chat/completions`` (``response_format``
json_schema strict), half through ``/api/chat`` (``format``). Then the unmodified ``openai`` client's
own structured-output call (``chat.completions.parse`` with a pydantic model, strict json_schema, the
model's default temperature), and a schema feature the engine cannot enforce is a 400 naming it.
"""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import pydantic
import pytest

from bench.constraints import ROUTES, ask, corpus, invalid
from tests.ffserve.serve_testkit import Server

SAMPLE = 8
MAX_TOKENS = 200


def test_a_sample_of_the_corpus_is_always_valid(server: Server) -> None:
    items = corpus()
    assert len(items) >= 30
    step = len(items) // SAMPLE
    sample = items[::step][:SAMPLE]
    jobs = [(ROUTES[(i + seed) % 2], item, seed, temp)
            for i, item in enumerate(sample) for seed in (0, 1) for temp in (0.0, 1.0)]
    with httpx.Client(timeout=300) as client, concurrent.futures.ThreadPoolExecutor(4) as pool:

        def one(job: tuple[str, dict[str, object], int, float]) -> str | None:
            route, item, seed, temp = job
            text, reason = ask(client, server.url, "smollm2", route, item, seed, temp, MAX_TOKENS)
            why = invalid(item["schema"], text)  # type: ignore[arg-type]
            return None if why is None else f"{route} {item['name']} seed {seed} T={temp} ({reason}): {why}"

        failures = [why for why in pool.map(one, jobs) if why is not None]
    assert not failures, "\n".join(failures)


class City(pydantic.BaseModel):
    city: str
    country: str


def test_openai_parse_with_a_pydantic_model(ai: openai.OpenAI) -> None:
    """What ``with_structured_output(method="json_schema")`` and the SDK's ``parse`` send: a strict
    json_schema, at the model's default temperature; the answer parses into the model every time."""
    for seed in range(3):
        r = ai.chat.completions.parse(
            model="smollm2", seed=seed, temperature=1.0, max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": "What is the capital of France, and its country?"}],
            response_format=City,
        )
        choice = r.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, City)


@pytest.mark.parametrize("route", ROUTES)
def test_an_unsupported_schema_feature_is_a_400_naming_it(server: Server, route: str) -> None:
    item = {"name": "unique", "prompt": "Three numbers.",
            "schema": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}}
    with httpx.Client(timeout=60) as client, pytest.raises(httpx.HTTPStatusError) as err:
        ask(client, server.url, "smollm2", route, item, 0, 0.0, 16)
    assert err.value.response.status_code == 400
    assert "uniqueItems" in err.value.response.text
