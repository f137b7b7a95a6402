"""The Starlette application: routes, the guard middleware, error mapping and the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware

import ffruntime
from ffruntime import tracing
from ffserve.builder import Builder
from ffserve.errors import EXCEPTION_HANDLERS
from ffserve.metrics import Metrics, RuntimeStats
from ffserve.middleware import Guard
from ffserve.routes import anthropic, audio, ollama, ollama_create, ollama_models, openai, ops, responses, v2
from ffserve.scheduler import Loader, Scheduler
from ffserve.settings import Settings
from ffserve.state import AppState
from registry.folder import folder_model_name, import_folder
from registry.home import store_dir
from registry.store import Store

if TYPE_CHECKING:
    from grpc.aio import Server as GrpcServer

log = logging.getLogger("ffserve")


async def _start_grpc(state: AppState, settings: Settings, draining: Callable[[], bool]) -> GrpcServer | None:
    """The gRPC server when FF_GRPC_PORT is set (grpcio and tritonclient imported only then)."""
    if settings.grpc_port is None:
        return None
    try:
        from ffserve.grpc_server import start_grpc
    except ImportError as exc:
        raise RuntimeError(
            f"FF_GRPC_PORT is set but the gRPC server cannot start ({exc}); install ferrousforge[grpc]"
        ) from None
    return await start_grpc(state, settings, draining)


def create_app(
    settings: Settings,
    store: Store | None = None,
    *,
    loader: Loader = ffruntime.load,
    builder: Builder | None = None,
) -> Starlette:
    """The server for ``settings``; ``loader`` turns a stored variant into a runtime (the scheduler's);
    ``builder`` builds what ``/api/create`` asks for (none: /api/create answers 501)."""
    store = store or Store(store_dir())
    folder, folder_model = settings.models_dir, None
    if folder is not None:  # a plain model folder (KServe /mnt/models): imported at start, then served
        folder_model = folder_model_name(folder, settings.model_name)
        settings = settings.model_copy(update={"models": [*settings.models, folder_model]})
    tracing.configure("ff-serve")
    metrics = Metrics()
    metrics.memory_budget.set(settings.max_memory)
    metrics.queue_capacity.set(settings.max_queue)
    state = AppState(settings, store, Scheduler(settings, store, metrics, loader=loader), metrics, builder)
    metrics.registry.register(RuntimeStats(lambda: [(m.name, m.runtime) for m in state.scheduler.loaded()]))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.scheduler.start()
        if folder is not None and folder_model is not None:
            await asyncio.to_thread(import_folder, store, folder, folder_model)
        grpc = await _start_grpc(state, settings, lambda: bool(app.state.draining))
        preload = asyncio.get_running_loop().create_task(state.scheduler.preload(settings.models))
        try:
            yield
        finally:
            preload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await preload
            if grpc is not None:
                await grpc.stop(grace=settings.shutdown_timeout)
            await state.scheduler.close()

    app = Starlette(
        # Starlette tries routes in order, a regex each: the inference routes, hit on every request, first
        # (no two of these lists match the same path, so the order changes nothing else).
        routes=[
            *openai.ROUTES,
            *audio.ROUTES,
            *anthropic.ROUTES,
            *responses.ROUTES,
            *ollama.ROUTES,
            *v2.ROUTES,
            *ollama_models.ROUTES,
            *ollama_create.ROUTES,
            *ops.ROUTES,
        ],
        middleware=[
            Middleware(
                Guard,
                api_keys=settings.api_keys,
                max_body=settings.max_body_bytes,
                max_upload=settings.max_upload_bytes,
                log=settings.access_log,
                responses=metrics.http_responses,
            )
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.ff = state
    app.state.draining = False
    return app
