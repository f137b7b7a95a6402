"""Schemathesis fuzzes a real ``ff serve`` from its own ``/openapi.json``: no 500, answers as documented.

A server of its own (the fuzzer deletes and copies models), with the shipped SmolLM2 as ``tiny``.
/api/pull and /api/push are left out: they would send the fuzzer's names to registries on the network
(their error mapping has its own tests). Half the bodies of the model routes name the real model, so
the fuzzer's options, formats and tools reach the engine; answers are short (FF_NUM_CTX=256).
Examples per operation are bounded (FUZZ_EXAMPLES, default 8): well under two minutes on two cores.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from registry.store import Store
from tests.ffserve.serve_testkit import Server, start_server
from tests.models import add_model

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
MODEL_ROUTES = {
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("fuzzhome")
    add_model(
        Store(home / "store"),
        "tiny:latest",
        {"q4_1": smollm2_gguf},
        params={"temperature": 0.0, "num_predict": 8, "stop": ["<|im_end|>"]},
    )
    logs = tmp_path_factory.mktemp("fuzzlogs")
    with start_server(home, logs, FF_QUANTIZE="q4_1", FF_NUM_CTX="256") as s:  # short answers
        yield s


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.exclude(path_regex=r"^/api/(pull|push)$").parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
def test_no_500_and_answers_match_the_schema(case: schemathesis.Case, fuzz_server: Server) -> None:
    body = case.body
    model = body.get("model") if isinstance(body, dict) else None
    valid_name = isinstance(model, str) and 0 < len(model) <= 512  # a negative case keeps its bad name
    if case.path in MODEL_ROUTES and valid_name and zlib.crc32(repr(body).encode()) % 2:
        body["model"] = "tiny"  # type: ignore[index]  # half the bodies reach the real model
    response = case.call(timeout=120)
    assert response.status_code < 500 or response.status_code == 503, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}\n{fuzz_server.logs()}"
    )
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ],
    )


def test_server_alive_after_fuzzing(fuzz_server: Server) -> None:
    assert fuzz_server.proc.poll() is None
    assert httpx.get(fuzz_server.url + "/health/live").json() == {"status": "ok"}
    assert "Internal" not in fuzz_server.logs() and "Traceback" not in fuzz_server.logs()


def test_every_route_is_in_the_document(fuzz_server: Server) -> None:
    from ffserve.app import create_app
    from ffserve.openapi import undocumented
    from ffserve.settings import Settings

    app = create_app(Settings(), Store(fuzz_server.log.parent / "empty-store"))
    assert undocumented(app.routes) == []
    doc = httpx.get(fuzz_server.url + "/openapi.json").json()
    assert (
        doc["openapi"].startswith("3.1")
        and "/api/chat" in doc["paths"]
        and "/v1/chat/completions" in doc["paths"]
        and {"/v1/messages", "/v1/messages/count_tokens", "/v1/responses"} <= set(doc["paths"])
    )
    assert "mirostat" in doc["components"]["schemas"]["Options"]["properties"]
