"""Probes, metrics and the API's description: /health/live, /health/ready (never load a model),
/metrics (Prometheus), /openapi.json."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ffserve.encoding import JSONResponse
from ffserve.openapi import document
from ffserve.state import app_state


async def live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    e = app_state(request)
    missing = [n for n in e.settings.models if not e.scheduler.is_loaded(n)]
    if missing or getattr(request.app.state, "draining", False):
        reason = "shutting down" if not missing else "loading " + ", ".join(missing)
        return JSONResponse({"status": "not ready", "error": reason}, status_code=503)
    return JSONResponse({"status": "ready", "models": [m.name for m in e.scheduler.loaded()]})


async def metrics(request: Request) -> Response:
    return Response(generate_latest(app_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    doc = getattr(request.app.state, "openapi", None)
    if doc is None:
        doc = request.app.state.openapi = document(request.app.routes)
    return JSONResponse(doc)


ROUTES = [
    Route("/health/live", live, methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
