"""Run the server: uvicorn with graceful shutdown (in-flight requests drain before models unload)."""

from __future__ import annotations

import logging

from ffserve.builder import Builder
from ffserve.settings import Settings


def serve(settings: Settings, builder: Builder | None = None) -> None:
    """Serve until stopped; ``builder`` builds what /api/create asks for (``ff serve`` passes ffbuild's)."""
    import uvicorn

    from ffserve.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, builder=builder)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,  # ffserve.middleware logs every request itself
        log_level="info",
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
        lifespan="on",
    )
