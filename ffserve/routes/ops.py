"""Probes, metrics and the API's description: /health/live, /health/ready (never load a model),
/metrics (Prometheus), /openapi.json."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ffserve.encoding import JSONResponse
from ffserve.openapi import document
from ffserve.state import AppState, app_state


async def live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def not_ready(e: AppState, draining: bool) -> str | None:
    """Why the server is not ready (REST's /health/ready and gRPC's ServerReady), or None when it is."""
    missing = [n for n in e.settings.models if not e.scheduler.is_loaded(n)]
    if missing:
        return "loading " + ", ".join(missing)
    return "shutting down" if draining else None


async def ready(request: Request) -> Response:
    e = app_state(request)
    reason = not_ready(e, getattr(request.app.state, "draining", False))
    if reason is not None:
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
