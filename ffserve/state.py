"""What every handler needs, kept on ``app.state.engine``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import Request

from ffserve.metrics import Metrics
from ffserve.scheduler import Scheduler
from ffserve.settings import Settings
from registry.store import Store


@dataclass
class Engine:
    settings: Settings
    store: Store
    scheduler: Scheduler
    metrics: Metrics
    started: float = field(default_factory=time.time)


def engine(request: Request) -> Engine:
    e: Engine = request.app.state.engine
    return e
