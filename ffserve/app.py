"""The Starlette application: routes, the guard middleware, error mapping and the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware

import ffruntime
from ffserve.errors import EXCEPTION_HANDLERS
from ffserve.metrics import Metrics, RuntimeStats
from ffserve.middleware import Guard
from ffserve.routes import audio, ollama, ollama_models, openai, ops, v2
from ffserve.scheduler import Loader, Scheduler
from ffserve.settings import Settings
from ffserve.state import AppState
from registry.folder import folder_model_name, import_folder
from registry.home import store_dir
from registry.store import Store

log = logging.getLogger("ffserve")


def create_app(
    settings: Settings, store: Store | None = None, *, loader: Loader = ffruntime.load
) -> Starlette:
    """The server for ``settings``; ``loader`` turns a stored variant into a runtime (the scheduler's)."""
    store = store or Store(store_dir())
    folder, folder_model = settings.models_dir, None
    if folder is not None:  # a plain model folder (KServe /mnt/models): imported at start, then served
        folder_model = folder_model_name(folder, settings.model_name)
        settings = settings.model_copy(update={"models": [*settings.models, folder_model]})
    metrics = Metrics()
    state = AppState(settings, store, Scheduler(settings, store, metrics, loader=loader), metrics)
    metrics.registry.register(RuntimeStats(lambda: [(m.name, m.runtime) for m in state.scheduler.loaded()]))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.scheduler.start()
        if folder is not None and folder_model is not None:
            await asyncio.to_thread(import_folder, store, folder, folder_model)
        preload = asyncio.get_running_loop().create_task(state.scheduler.preload(settings.models))
        try:
            yield
        finally:
            preload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await preload
            await state.scheduler.close()

    app = Starlette(
        # Starlette tries routes in order, a regex each: the inference routes, hit on every request, first
        # (no two of these lists match the same path, so the order changes nothing else).
        routes=[
            *openai.ROUTES,
            *audio.ROUTES,
            *ollama.ROUTES,
            *v2.ROUTES,
            *ollama_models.ROUTES,
            *ops.ROUTES,
        ],
        middleware=[
            Middleware(
                Guard, api_keys=settings.api_keys, max_body=settings.max_body_bytes, log=settings.access_log
            )
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.ff = state
    app.state.draining = False
    return app
