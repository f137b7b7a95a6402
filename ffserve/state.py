"""What every handler needs, kept on ``app.state.ff``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import Request

from ffserve.builder import Builder
from ffserve.metrics import Metrics
from ffserve.scheduler import Scheduler
from ffserve.settings import Settings
from registry.store import Store


@dataclass
class AppState:
    settings: Settings
    store: Store
    scheduler: Scheduler
    metrics: Metrics
    builder: Builder | None = None  # what /api/create builds with (ff serve: ffbuild's pipeline)
    started: float = field(default_factory=time.time)


def app_state(request: Request) -> AppState:
    e: AppState = request.app.state.ff
    return e
