"""The OpenAPI 3.1 document of every route, built from the wire types' JSON schemas (``/openapi.json``).

:data:`OPERATIONS` says, for each route and method, which pydantic model its JSON body is and which
model its answer is; :func:`document` turns that into OpenAPI, with the pydantic schemas as
``components``. :func:`undocumented` lists app routes missing from the table (a test keeps it empty),
so the document cannot drift from the routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Route

from ffserve import __version__
from ffserve.errors import anthropic_route
from ffserve.wire import anthropic as anw
from ffserve.wire import ollama as ow
from ffserve.wire import openai as aw
from ffserve.wire import openai_responses as rsw
from ffserve.wire import responses as rw
from ffserve.wire import v2 as v2w

NDJSON, SSE, JSON, TEXT = "application/x-ndjson", "text/event-stream", "application/json", "text/plain"
BINARY = "application/octet-stream"


@dataclass(frozen=True)
class Operation:
    summary: str
    body: type[BaseModel] | None = None
    answer: type[BaseModel] | None = None  # the 200 JSON body (or the last line of a stream)
    stream: str | None = None  # the media type of the streamed answer, when the body asks to stream
    text: bool = False  # a plain-text 200 answer
    empty: bool = False  # a 200 without a body
    upload: bool = False  # the body is a file's bytes (application/octet-stream)


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/", "GET"): Operation("Liveness banner", text=True),
    ("/api/version", "GET"): Operation("Server version", answer=rw.VersionResponse),
    ("/api/tags", "GET"): Operation("Models in the store", answer=rw.TagsResponse),
    ("/api/show", "POST"): Operation("A model's details", ow.NameRequest, rw.ShowResponse),
    ("/api/ps", "GET"): Operation("Loaded models", answer=rw.PsResponse),
    ("/api/pull", "POST"): Operation(
        "Pull a model from a registry", ow.NameRequest, rw.StatusResponse, NDJSON
    ),
    ("/api/push", "POST"): Operation("Push a model to a registry", ow.NameRequest, rw.StatusResponse, NDJSON),
    ("/api/delete", "DELETE"): Operation("Delete a model", ow.NameRequest, empty=True),
    ("/api/copy", "POST"): Operation("Copy (tag) a model", ow.CopyRequest, empty=True),
    ("/api/create", "POST"): Operation(
        "Create a model from a stored one or uploaded blobs", ow.CreateRequest, rw.StatusResponse, NDJSON
    ),
    ("/api/blobs/{digest}", "HEAD"): Operation("Whether a blob is on the server (200, else 404)", empty=True),
    ("/api/blobs/{digest}", "POST"): Operation(
        "Upload a blob: 201 stored, 200 already there, 400 when the body's digest differs",
        empty=True,
        upload=True,
    ),
    ("/api/generate", "POST"): Operation(
        "Generate a completion", ow.GenerateRequest, rw.GenerateResponse, NDJSON
    ),
    ("/api/chat", "POST"): Operation(
        "Chat (tools, structured output)", ow.ChatRequest, rw.ChatResponse, NDJSON
    ),
    ("/api/embed", "POST"): Operation("Embeddings of texts", ow.EmbedRequest, rw.EmbedResponse),
    ("/api/embeddings", "POST"): Operation("Embedding (legacy)", ow.EmbeddingsRequest, rw.EmbeddingResponse),
    ("/v1/chat/completions", "POST"): Operation(
        "OpenAI chat completions", aw.ChatCompletionRequest, rw.ChatCompletion, SSE
    ),
    ("/v1/completions", "POST"): Operation("OpenAI completions", aw.CompletionRequest, rw.Completion, SSE),
    ("/v1/embeddings", "POST"): Operation("OpenAI embeddings", aw.EmbeddingRequest, rw.EmbeddingList),
    ("/v1/responses", "POST"): Operation(
        "OpenAI Responses (stateless: no previous_response_id)", rsw.ResponsesRequest, rsw.ResponseObject, SSE
    ),
    ("/v1/messages", "POST"): Operation(
        "Anthropic Messages (errors in Anthropic's shape)", anw.MessagesRequest, anw.MessageOut, SSE
    ),
    ("/v1/messages/count_tokens", "POST"): Operation(
        "Anthropic token count", anw.CountTokensRequest, anw.TokenCount
    ),
    ("/v1/audio/transcriptions", "POST"): Operation(
        "OpenAI speech to text (multipart form: file, model, language, prompt, temperature, "
        "response_format, timestamp_granularities[], stream)"
    ),
    ("/v1/audio/translations", "POST"): Operation(
        "OpenAI speech to English text (multipart form: file, model, prompt, temperature, response_format)"
    ),
    ("/v1/models", "GET"): Operation("OpenAI model list", answer=rw.ModelList),
    ("/v1/models/{model}", "GET"): Operation("One OpenAI model", answer=rw.ModelObject),
    ("/health/live", "GET"): Operation("Liveness probe", answer=rw.Health),
    ("/health/ready", "GET"): Operation(
        "Readiness probe (503 until the FF_MODELS are loaded)", answer=rw.Health
    ),
    ("/v2", "GET"): Operation("Open Inference Protocol v2: server metadata"),
    ("/v2/health/live", "GET"): Operation("OIP v2 liveness (no API key needed)"),
    ("/v2/health/ready", "GET"): Operation("OIP v2 readiness (no API key needed)"),
    ("/v2/models/{rest}", "GET"): Operation(
        "OIP v2 model metadata ({m}, {m}/versions/{v}) and readiness ({m}/ready)"
    ),
    ("/v2/models/{rest}", "POST"): Operation(
        "OIP v2 inference ({m}/infer): JSON tensors, or the binary tensor extension", v2w.InferRequest
    ),
    ("/metrics", "GET"): Operation("Prometheus metrics", text=True),
    ("/openapi.json", "GET"): Operation("This document"),
}


def _path(route: Route) -> str:
    return route.path.replace(":path}", "}")


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _responses(path: str, op: Operation, stream_default: bool) -> dict[str, object]:
    if anthropic_route(path):
        error = _ref(anw.AnthropicError)
    else:
        error = _ref(rw.OpenAIError if path.startswith("/v1/") else rw.OllamaError)
    ok: dict[str, object] = {"description": "OK"}
    if op.text:
        ok["content"] = {TEXT: {"schema": {"type": "string"}}}
    elif op.answer is not None:
        content: dict[str, object] = {JSON: {"schema": _ref(op.answer)}}
        if op.stream == SSE:  # each event: a JSON chunk as its data, the last one "[DONE]"
            event = {"type": "object", "properties": {"data": {"type": "string"}}, "required": ["data"]}
            content[SSE] = {"schema": event}
        elif op.stream:
            content[op.stream] = {"schema": {"type": "string"}}
        ok["content"] = content
    elif not op.empty:
        ok["content"] = {JSON: {"schema": {"type": "object"}}}
    out: dict[str, object] = {"200": ok}
    for code, what in (("4XX", "The client's mistake"), ("5XX", "The server's or an upstream's failure")):
        out[code] = {"description": what, "content": {JSON: {"schema": error}}}
    return out


def document(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` (those in :data:`OPERATIONS`)."""
    bodies = {op.body for op in OPERATIONS.values() if op.body is not None}
    answers = {op.answer for op in OPERATIONS.values() if op.answer is not None}
    answers |= {rw.OllamaError, rw.OpenAIError, anw.AnthropicError}
    keyed = [(m, "validation") for m in sorted(bodies, key=lambda m: m.__name__)]
    keyed += [(m, "serialization") for m in sorted(answers, key=lambda m: m.__name__)]
    _, defs = models_json_schema(keyed, ref_template="#/components/schemas/{model}")  # type: ignore[arg-type]
    paths: dict[str, dict[str, object]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        path = _path(route)
        for method in sorted(route.methods or ()):
            op = OPERATIONS.get((path, method))
            if op is None:
                continue
            entry: dict[str, object] = {
                "summary": op.summary,
                "operationId": f"{method.lower()}{path.replace('/', '_').replace('{', '').replace('}', '')}",
                "responses": _responses(path, op, op.stream is not None),
            }
            for param in ("model", "digest"):
                if "{" + param + "}" in path:
                    entry["parameters"] = [
                        {"name": param, "in": "path", "required": True, "schema": {"type": "string"}}
                    ]
            if op.body is not None:
                entry["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(op.body)}}}
            elif op.upload:
                binary = {"type": "string", "format": "binary"}
                entry["requestBody"] = {"required": True, "content": {BINARY: {"schema": binary}}}
            paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "FerrousForge ff serve",
            "version": __version__,
            "description": "Ollama (/api), OpenAI (/v1), Anthropic Messages (/v1/messages), OIP v2 (/v2) "
            "and operations routes.",
        },
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }


def undocumented(routes: list[BaseRoute]) -> list[str]:
    """``METHOD path`` of each route missing from :data:`OPERATIONS` (HEAD is implied by GET)."""
    out = []
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD" and (_path(route), method) not in OPERATIONS:
                    out.append(f"{method} {_path(route)}")
    return out
