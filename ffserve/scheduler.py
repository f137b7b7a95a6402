"""Loading, keep-alive, eviction under a memory budget, queueing and per-model concurrency.

- A model loads on first use (pulled first when ``--pull`` is on) and stays for its keep-alive
  (default 5m; 0 unloads when its last request ends; negative keeps it forever).
- Before a load, idle models are evicted least recently used first until the new one fits under
  ``max_memory`` and ``max_loaded_models``; a model in use is never evicted (the load waits instead).
- A load runs outside the scheduler's lock (a slow engine load never blocks requests to other models),
  with at most one pending load per variant: later requests for it wait for that load.
- Each model runs as many requests at a time as its runtime says (``Runtime.parallel``), in order of
  arrival; at most ``max_queue`` wait behind them and the rest get :class:`Overloaded` (503 with
  ``Retry-After``).
- The loader and the resolver are injected (``ffruntime.load`` and the store by default), so the
  scheduler's own tests run with fake runtimes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property

import ffruntime
from ffruntime import tracing
from ffruntime.errors import BackendUnavailable
from ffruntime.runtime import Capability, EmbedRuntime, Runtime, TensorRuntime, TextRuntime
from ffruntime.settings import LoadSettings
from ffserve.errors import InsufficientMemory, Overloaded, mapped_error
from ffserve.metrics import Metrics
from ffserve.models import Resolved, canonical, resolve_or_pull
from ffserve.settings import Settings
from registry.artifact import ModelFiles, VariantRef
from registry.store import Store

Loader = Callable[[VariantRef, ModelFiles, LoadSettings], Awaitable[Runtime]]
Resolver = Callable[[str], Awaitable[Resolved]]

log = logging.getLogger("ffserve.scheduler")


@dataclass
class Loaded:
    name: str
    resolved: Resolved
    runtime: Runtime
    load_ns: int
    slots: asyncio.Semaphore
    expires_at: float | None  # monotonic seconds; None: forever
    active: int = 0  # requests holding the model (waiting or running)
    waiting: int = 0
    last_used: float = field(default_factory=time.monotonic)
    names: set[str] = field(default_factory=set)
    pinned: bool = False  # a --models model: kept unless a request asks otherwise

    @property
    def key(self) -> str:
        return self.resolved.variant.descriptor.digest

    # What the runtime implements, checked once: a runtime_checkable isinstance re-reads the protocol's
    # members each time (57 µs a request under load on Python 3.11).
    @cached_property
    def text_runtime(self) -> TextRuntime | None:
        return self.runtime if isinstance(self.runtime, TextRuntime) else None

    @cached_property
    def embed_runtime(self) -> EmbedRuntime | None:
        rt = self.runtime
        return rt if Capability.EMBED in rt.capabilities and isinstance(rt, EmbedRuntime) else None

    @cached_property
    def tensor_runtime(self) -> TensorRuntime | None:
        rt = self.runtime
        return rt if Capability.TENSOR in rt.capabilities and isinstance(rt, TensorRuntime) else None

    def expires_wall(self) -> float | None:
        return None if self.expires_at is None else time.time() + (self.expires_at - time.monotonic())


def _need(resolved: Resolved) -> int:
    return sum(p.stat().st_size for p in resolved.files.weights)


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        *,
        loader: Loader = ffruntime.load,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._loader = loader
        self._resolver = resolver or self._resolve
        self._pending: dict[str, tuple[asyncio.Task[None], int]] = {}  # variant digest → (load, need)
        self._models: dict[str, Loaded] = {}  # variant digest → model
        self._names: dict[str, str] = {}  # canonical name → variant digest
        self._cond = asyncio.Condition()
        self._reaper: asyncio.Task[None] | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._room_waiters = 0  # loads waiting in _make_room for a model to become idle

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def close(self) -> None:
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        async with self._cond:
            for model in list(self._models.values()):
                await self._unload(model)

    async def preload(self, names: list[str]) -> None:
        """Load the --models at start; they stay loaded (pinned) unless a request says otherwise."""
        for name in names:
            try:
                model = await self.get(name, keep_alive=-1)
            except Exception:
                log.exception("could not load %s at start", name)
                continue
            model.pinned = True
            model.expires_at = None

    def ready(self) -> bool:
        return all(self.is_loaded(n) for n in self.settings.models)

    def loaded(self) -> list[Loaded]:
        return sorted(self._models.values(), key=lambda m: m.name)

    def is_loaded(self, name: str) -> bool:
        key = self._names.get(canonical(name))
        return key is not None and key in self._models

    def forget(self, name: str) -> None:
        """Drop a cached name → variant mapping (after delete, copy, pull)."""
        self._names.pop(canonical(name), None)

    # --- keep-alive ---------------------------------------------------------------------------------------
    def keep(self, model: Loaded, keep_alive: float | None) -> None:
        """Restart ``model``'s keep-alive (a pinned --models model stays unless a duration is given)."""
        model.expires_at = None if keep_alive is None and model.pinned else self._keep(keep_alive)

    def _keep(self, keep_alive: float | None) -> float | None:
        ka = self.settings.keep_alive if keep_alive is None else keep_alive
        return None if ka < 0 else time.monotonic() + ka

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for model in list(self._models.values()):
                if model.active == 0 and model.expires_at is not None and model.expires_at <= now:
                    async with self._cond:
                        if model.active == 0 and self._models.get(model.key) is model:
                            await self._unload(model)

    async def _unload(self, model: Loaded) -> None:
        self._models.pop(model.key, None)
        for n in model.names:
            if self._names.get(n) == model.key:
                self._names.pop(n, None)
        self.metrics.loaded.set(len(self._models))
        self.metrics.memory.set(sum(m.runtime.memory_bytes for m in self._models.values()))
        log.info("unloading %s", model.name)
        await model.runtime.close()
        self._cond.notify_all()

    async def unload(self, name: str) -> bool:
        """Unload now if idle, else as soon as its requests end; False when it is not loaded."""
        key = self._names.get(canonical(name))
        model = self._models.get(key) if key else None
        if model is None:
            return False
        model.expires_at = time.monotonic()
        if model.active == 0:
            async with self._cond:
                if self._models.get(model.key) is model and model.active == 0:
                    await self._unload(model)
        return True

    # --- loading ----------------------------------------------------------------------------------------
    def _fast(self, name: str) -> Loaded | None:
        key = self._names.get(name)
        return self._models.get(key) if key else None

    async def _resolve(self, name: str) -> Resolved:
        s = self.settings
        return await resolve_or_pull(
            self.store,
            name,
            target=s.target,
            quantize=s.quantize,
            backend=s.backend,
            allow_pull=s.pull,
            insecure=s.registry_insecure,
        )

    async def get(self, name: str, keep_alive: float | None = None) -> Loaded:
        """The loaded model for ``name``, loading it (and evicting others) when needed."""
        name = canonical(name)
        model = self._fast(name)
        if model is not None:
            return model
        resolved = await self._resolver(name)
        key = resolved.variant.descriptor.digest
        while True:
            async with self._cond:
                model = self._models.get(key)
                if model is not None:
                    model.names.add(name)
                    self._names[name] = key
                    return model
                pending = self._pending.get(key)
                if pending is None:
                    await self._make_room(name, resolved)
                    if key in self._models or key in self._pending:  # loaded or started while we waited
                        continue
                    # The load is its own task: a client that goes away does not cancel it for the others.
                    task = asyncio.get_running_loop().create_task(self._load(name, resolved, keep_alive))
                    task.add_done_callback(lambda t: t.cancelled() or t.exception())
                    pending = (task, _need(resolved))
                    self._pending[key] = pending
            await asyncio.shield(pending[0])  # outside the lock; raises the load's error

    async def _make_room(self, name: str, resolved: Resolved) -> None:
        """Evict idle models (LRU) until ``resolved`` fits; wait while only busy ones stand in the way.
        Loads in progress count as loaded. Called with the lock held."""
        s = self.settings
        need = _need(resolved)
        if s.max_memory and need > s.max_memory:
            raise InsufficientMemory(
                f"{name} needs at least {need} bytes; the memory budget (FF_MAX_MEMORY) is {s.max_memory}"
            )
        while True:
            used = sum(m.runtime.memory_bytes for m in self._models.values())
            used += sum(n for _, n in self._pending.values())
            count = len(self._models) + len(self._pending)
            full = count >= s.max_loaded_models or (s.max_memory and used + need > s.max_memory)
            if not full:
                return
            idle = [m for m in self._models.values() if m.active == 0]
            if idle:
                await self._unload(min(idle, key=lambda m: m.last_used))
                continue
            log.info("waiting for a loaded model to become idle before loading %s", name)
            self._room_waiters += 1
            try:
                await self._cond.wait()
            finally:
                self._room_waiters -= 1

    async def _load(self, name: str, resolved: Resolved, keep_alive: float | None) -> None:
        """Load outside the lock, then publish the model (or drop the pending entry on failure)."""
        key = resolved.variant.descriptor.digest
        t0 = time.perf_counter_ns()
        try:
            try:
                load = self.settings.load_settings(resolved.files.params)
                if self.settings.max_memory:  # what the other models leave (automatic slots fit in it)
                    used = sum(m.runtime.memory_bytes for m in self._models.values())
                    load = load.with_(memory_budget=max(1, self.settings.max_memory - used))
                with tracing.span("model.load", model=name, variant=resolved.variant.name):
                    runtime = await self._loader(resolved.variant, resolved.files, load)
            except BackendUnavailable as exc:
                raise mapped_error(exc, str(exc)) from None
        except BaseException as exc:
            if isinstance(exc, Exception):
                self.metrics.load_failures.labels(name).inc()
            async with self._cond:
                self._pending.pop(key, None)
                self._cond.notify_all()
            raise
        load_ns = time.perf_counter_ns() - t0
        async with self._cond:
            model = Loaded(
                name,
                resolved,
                runtime,
                load_ns,
                asyncio.Semaphore(max(1, runtime.parallel)),
                self._keep(keep_alive),
            )
            self._models[key] = model
            self._pending.pop(key, None)
            self._cond.notify_all()
        self.metrics.loads.labels(name).inc()
        self.metrics.load_time.labels(name).observe(load_ns / 1e9)
        self.metrics.loaded.set(len(self._models))
        self.metrics.memory.set(sum(m.runtime.memory_bytes for m in self._models.values()))
        log.info("loaded %s (%s) in %.2fs", name, resolved.variant.name, load_ns / 1e9)

    # --- requests ---------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def slot(self, name: str, keep_alive: float | None = None) -> AsyncIterator[Loaded]:
        """Hold a slot of ``name`` for one request (queued in order of arrival, bounded)."""
        model = await self.get(name, keep_alive)
        label = model.name
        tracing.annotate(model=label, variant=model.resolved.variant.name)
        if model.waiting >= self.settings.max_queue:
            self.metrics.rejected.labels(label).inc()
            raise Overloaded(
                f"{label}: {model.waiting} requests are already waiting "
                f"(FF_MAX_QUEUE={self.settings.max_queue})"
            )
        metrics = self.metrics.of(label)
        model.active += 1
        try:
            model.waiting += 1
            metrics.waiting.inc()
            t0 = time.perf_counter()
            try:
                with tracing.span("queue"):
                    await model.slots.acquire()
            finally:
                model.waiting -= 1
                metrics.waiting.dec()
            metrics.queue_time.observe(time.perf_counter() - t0)
            metrics.running.inc()
            try:
                yield model
            finally:
                model.slots.release()
                metrics.running.dec()
        finally:
            model.active -= 1
            model.last_used = time.monotonic()
            self.keep(model, keep_alive)
            # An idle model matters to a load waiting for room, or when its keep-alive has run out
            # (keep_alive 0): only then is the lock taken, not after every request.
            expired = model.expires_at is not None and model.expires_at <= time.monotonic()
            if model.active == 0 and not self._closing and (expired or self._room_waiters):
                task = asyncio.get_running_loop().create_task(self._idle(model))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _idle(self, model: Loaded) -> None:
        async with self._cond:
            expired = model.expires_at is not None and model.expires_at <= time.monotonic()
            if expired and model.active == 0 and self._models.get(model.key) is model:
                await self._unload(model)
            self._cond.notify_all()
