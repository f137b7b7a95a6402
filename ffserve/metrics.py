"""Prometheus metrics with vLLM-style names (``ff:`` prefix), labelled by model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)


class Metrics:
    """One set per app (its own registry, so tests and several apps in one process do not clash)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        m = ["model_name"]
        self.ttft = Histogram(
            "ff:time_to_first_token_seconds", "Time to first token", m, buckets=_LATENCY, registry=r
        )
        self.itl = Histogram(
            "ff:inter_token_latency_seconds", "Time between tokens", m, buckets=_ITL, registry=r
        )
        self.e2e = Histogram(
            "ff:e2e_request_latency_seconds",
            "Request latency, arrival to last byte",
            m,
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_time = Histogram(
            "ff:request_queue_time_seconds", "Time waiting for a slot", m, buckets=_LATENCY, registry=r
        )
        self.running = Gauge("ff:num_requests_running", "Requests on a slot", m, registry=r)
        self.waiting = Gauge("ff:num_requests_waiting", "Requests queued for a slot", m, registry=r)
        self.prompt_tokens = Counter("ff:prompt_tokens", "Prompt tokens processed", m, registry=r)
        self.generation_tokens = Counter("ff:generation_tokens", "Tokens generated", m, registry=r)
        self.cancelled = Counter(
            "ff:requests_cancelled", "Requests stopped because the client went away", m, registry=r
        )
        self.rejected = Counter(
            "ff:requests_rejected", "Requests refused with 503 (queue full)", m, registry=r
        )
        self.finished = Counter(
            "ff:request_success", "Requests finished", [*m, "finished_reason"], registry=r
        )
        self.loads = Counter("ff:model_loads", "Model loads", m, registry=r)
        self.load_time = Histogram(
            "ff:model_load_seconds", "Model load time", m, buckets=_LATENCY, registry=r
        )
        self.loaded = Gauge("ff:models_loaded", "Models loaded", registry=r)
        self.memory = Gauge("ff:models_memory_bytes", "Memory budgeted for loaded models", registry=r)
        self.memory_budget = Gauge(
            "ff:memory_budget_bytes", "Memory budget for loaded models (FF_MAX_MEMORY; 0: none)", registry=r
        )
        self.load_failures = Counter("ff:model_load_failures", "Model loads that failed", m, registry=r)
        self.queue_capacity = Gauge(
            "ff:queue_capacity", "Requests that may wait per model before 503 (FF_MAX_QUEUE)", registry=r
        )
        self.http_responses = Counter(
            "ff:http_responses", "HTTP responses by status code", ["code"], registry=r
        )
        self.grpc_responses = Counter(
            "ff:grpc_responses", "gRPC calls by method and status code", ["method", "code"], registry=r
        )
        self._models: dict[str, ModelMetrics] = {}

    def of(self, model: str) -> ModelMetrics:
        """``model``'s children of the metrics every request touches, looked up once per model name."""
        found = self._models.get(model)
        if found is None:
            found = self._models[model] = ModelMetrics(
                self.running.labels(model),
                self.waiting.labels(model),
                self.queue_time.labels(model),
                self.prompt_tokens.labels(model),
            )
        return found


@dataclass(frozen=True)
class ModelMetrics:
    """One model's labelled children (``labels()`` costs a few µs a call: a request made five)."""

    running: Gauge
    waiting: Gauge
    queue_time: Histogram
    prompt_tokens: Counter


RUNTIME_GAUGES = frozenset({"last_batch_sequences", "max_batch_sequences", "running", "slots", "threads",
                            "itl_p50_seconds", "itl_p99_seconds"})
"""Keys of a runtime's ``stats()`` that are levels; every other key is a monotonic count."""


class RuntimeStats(Collector):
    """At each scrape, the ``stats()`` of every loaded runtime that has them (the llama.cpp engine:
    decode steps, batch sizes, prefix-cache hits…) as ``ff:runtime_<key>`` by model. Counts restart
    when a model is reloaded, which Prometheus reads as a counter reset."""

    def __init__(self, runtimes: Callable[[], Iterable[tuple[str, object]]]) -> None:
        self.runtimes = runtimes

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for name, runtime in self.runtimes():
            stats = getattr(runtime, "stats", None)
            if not callable(stats):
                continue
            for key, value in stats().items():
                if key not in families:
                    kind = GaugeMetricFamily if key in RUNTIME_GAUGES else CounterMetricFamily
                    families[key] = kind(f"ff:runtime_{key}", f"runtime stats: {key}", labels=["model_name"])
                families[key].add_metric([name], float(value))
        yield from families.values()
