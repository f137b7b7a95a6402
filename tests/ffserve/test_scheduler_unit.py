"""The scheduler with fake runtimes (its loader and resolver are injected), as Ollama's scheduler tests do.

The real-model scheduler test is in test_serve_settings.py; these pin down the concurrency rules:
loads run outside the lock, one pending load per variant, a failed load reaches every waiter, a
client that goes away does not cancel the load for others, and a model admits as many requests at
once as its runtime says.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ffruntime.runtime import Capability
from ffruntime.settings import LoadSettings
from ffserve.metrics import Metrics
from ffserve.models import Resolved
from ffserve.scheduler import Scheduler
from ffserve.settings import Settings
from registry.artifact import ModelFiles, VariantRef
from registry.oci import ANN_VARIANT, OCI_MANIFEST, Descriptor, Manifest
from registry.store import Store


@dataclass
class FakeRuntime:
    name: str
    parallel: int = 1
    memory_bytes: int = 100
    context_length: int = 256
    capabilities: frozenset[Capability] = frozenset({Capability.GENERATE})
    closed: bool = False

    async def close(self) -> None:
        self.closed = True


@dataclass
class FakeLoader:
    """Loads take as long as their gate stays closed; each call is recorded."""

    parallel: int = 1
    fail: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    settings: list[LoadSettings] = field(default_factory=list)

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def __call__(self, variant: VariantRef, files: ModelFiles, settings: LoadSettings) -> FakeRuntime:
        self.calls.append(variant.name)
        self.settings.append(settings)
        if variant.name in self.gates:
            await self.gates[variant.name].wait()
        if variant.name in self.fail:
            raise RuntimeError(f"cannot load {variant.name}")
        return FakeRuntime(variant.name, parallel=self.parallel)


def _resolver(tmp: Path):  # type: ignore[no-untyped-def]
    async def resolve(name: str) -> Resolved:
        model = name.split(":")[0]
        weights = tmp / f"{model}.bin"
        weights.write_bytes(b"x" * 10)
        digest = "sha256:" + model.encode().hex().ljust(64, "0")[:64]
        desc = Descriptor(media_type=OCI_MANIFEST, digest=digest, size=1, annotations={ANN_VARIANT: model})
        manifest = Manifest.model_construct(schema_version=2, config=desc, layers=[], annotations={})
        files = ModelFiles(digest, manifest, None, {}, [weights], [], [])  # type: ignore[arg-type]
        return Resolved(name, VariantRef(desc), files)

    return resolve


def _scheduler(tmp: Path, loader: FakeLoader, **settings: object) -> Scheduler:
    s = Settings(**settings)  # type: ignore[arg-type]
    return Scheduler(s, Store(tmp / "store"), Metrics(), loader=loader, resolver=_resolver(tmp))


def test_a_slow_load_does_not_block_other_models(tmp_path: Path) -> None:
    async def scenario() -> None:
        loader = FakeLoader()
        sched = _scheduler(tmp_path, loader)
        await sched.get("fast")
        slow = asyncio.ensure_future(sched.get("slow"))
        loader.gate("slow")
        await asyncio.sleep(0.05)
        assert not slow.done()
        # the lock is free while "slow" loads: a request for the loaded model goes through at once
        async with sched.slot("fast") as model:
            assert model.runtime.name == "fast"  # type: ignore[attr-defined]
        loader.gate("slow").set()
        assert (await asyncio.wait_for(slow, 5)).runtime.name == "slow"  # type: ignore[attr-defined]
        await sched.close()

    asyncio.run(scenario())


def test_one_pending_load_per_variant(tmp_path: Path) -> None:
    async def scenario() -> None:
        loader = FakeLoader()
        loader.gate("m")
        sched = _scheduler(tmp_path, loader)
        waiters = [asyncio.ensure_future(sched.get("m")) for _ in range(5)]
        await asyncio.sleep(0.05)
        loader.gate("m").set()
        models = await asyncio.gather(*waiters)
        assert loader.calls == ["m"]
        assert len({id(m) for m in models}) == 1
        await sched.close()

    asyncio.run(scenario())


def test_a_failed_load_reaches_every_waiter_and_the_next_request_retries(tmp_path: Path) -> None:
    async def scenario() -> None:
        loader = FakeLoader(fail={"bad"})
        loader.gate("bad")
        sched = _scheduler(tmp_path, loader)
        waiters = [asyncio.ensure_future(sched.get("bad")) for _ in range(3)]
        await asyncio.sleep(0.05)
        loader.gate("bad").set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "cannot load bad" in str(r) for r in results)
        assert loader.calls == ["bad"]
        with pytest.raises(RuntimeError):
            await sched.get("bad")
        assert loader.calls == ["bad", "bad"]
        assert not sched.is_loaded("bad")
        await sched.close()

    asyncio.run(scenario())


def test_a_client_that_goes_away_does_not_cancel_the_load_for_others(tmp_path: Path) -> None:
    async def scenario() -> None:
        loader = FakeLoader()
        loader.gate("m")
        sched = _scheduler(tmp_path, loader)
        first = asyncio.ensure_future(sched.get("m"))
        second = asyncio.ensure_future(sched.get("m"))
        await asyncio.sleep(0.05)
        first.cancel()
        await asyncio.sleep(0.01)
        loader.gate("m").set()
        model = await asyncio.wait_for(second, 5)
        assert model.runtime.name == "m"  # type: ignore[attr-defined]
        assert loader.calls == ["m"]
        await sched.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("parallel", [1, 3])
def test_requests_at_once_come_from_the_runtime(tmp_path: Path, parallel: int) -> None:
    async def scenario() -> None:
        sched = _scheduler(tmp_path, FakeLoader(parallel=parallel), num_parallel=1)
        running = 0
        peak = 0
        release = asyncio.Event()

        async def request() -> None:
            nonlocal running, peak
            async with sched.slot("m"):
                running += 1
                peak = max(peak, running)
                await release.wait()
                running -= 1

        tasks = [asyncio.ensure_future(request()) for _ in range(parallel + 2)]
        await asyncio.sleep(0.05)
        assert peak == parallel
        release.set()
        await asyncio.gather(*tasks)
        await sched.close()

    asyncio.run(scenario())


def test_eviction_is_lru_and_never_of_a_model_in_use(tmp_path: Path) -> None:
    async def scenario() -> None:
        loader = FakeLoader()
        sched = _scheduler(tmp_path, loader, max_loaded_models=2)
        await sched.get("a")
        b = await sched.get("b")
        async with sched.slot("a"):  # a is now the most recently used
            pass
        await sched.get("c")  # evicts b, the least recently used idle model
        assert sched.is_loaded("a") and sched.is_loaded("c") and not sched.is_loaded("b")
        async with sched.slot("a"), sched.slot("c"):
            waiter = asyncio.ensure_future(sched.get("d"))
            await asyncio.sleep(0.05)
            assert not waiter.done()  # both loaded models are busy: the load waits
        await asyncio.wait_for(waiter, 5)
        # c was released before a (slots exit in reverse order), so c was the LRU idle model
        assert sched.is_loaded("a") and sched.is_loaded("d") and not sched.is_loaded("c")
        assert b.runtime.closed  # type: ignore[attr-defined]
        await sched.close()

    asyncio.run(scenario())


def test_the_loader_gets_the_servers_load_settings(tmp_path: Path) -> None:
    async def scenario() -> None:
        loader = FakeLoader()
        sched = _scheduler(tmp_path, loader, num_ctx=4096, num_parallel=2, num_threads=3)
        await sched.get("m")
        assert loader.settings == [LoadSettings(threads=3, num_ctx=4096, num_parallel=2)]
        await sched.close()

    asyncio.run(scenario())


def test_keep_alive_zero_unloads_when_the_last_request_ends(tmp_path: Path) -> None:
    async def scenario() -> None:
        sched = _scheduler(tmp_path, FakeLoader(parallel=2))
        async with sched.slot("m", keep_alive=0) as model:
            async with sched.slot("m", keep_alive=0):
                pass
            await asyncio.sleep(0.02)
            assert sched.is_loaded("m")  # one request still holds it
        for _ in range(50):
            if not sched.is_loaded("m"):
                break
            await asyncio.sleep(0.01)
        assert not sched.is_loaded("m") and model.runtime.closed  # type: ignore[attr-defined]
        async with sched.slot("kept"):
            pass
        await asyncio.sleep(0.02)
        assert sched.is_loaded("kept")  # the default keep-alive (5m) keeps it
        await sched.close()

    asyncio.run(scenario())


def test_automatic_slots_get_the_memory_the_other_models_leave(tmp_path: Path) -> None:
    async def scenario() -> None:
        loader = FakeLoader()
        sched = _scheduler(tmp_path, loader, max_memory=1000)
        await sched.get("a")
        await sched.get("b")
        first, second = loader.settings
        assert first.num_parallel == 0 and first.memory_budget == 1000  # 0: the runtime chooses
        assert second.memory_budget == 1000 - 100  # a FakeRuntime holds 100 bytes
        await sched.close()
        loader2 = FakeLoader()
        unbounded = _scheduler(tmp_path, loader2)
        await unbounded.get("c")
        assert loader2.settings[0].memory_budget == 0  # no budget: the runtime asks the machine
        await unbounded.close()

    asyncio.run(scenario())
