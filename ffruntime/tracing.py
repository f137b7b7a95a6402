"""OpenTelemetry traces for ``ff serve`` and ``ff build``, configured only by the standard ``OTEL_*``
environment variables, and free when they are unset.

Tracing is on when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set,
``OTEL_TRACES_EXPORTER`` is not ``none`` and ``OTEL_SDK_DISABLED`` is not ``true``. The exporter is
OTLP over HTTP (protobuf; the default of the specification) or over gRPC
(``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL=grpc``); everything else (headers, timeouts, batching with
``OTEL_BSP_*``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) is read by the SDK itself. The
OpenTelemetry packages (the ``tracing`` extra) are imported only then: with the variables unset no
exporter, provider or SDK module exists and every function here returns after one check of a module
global.

What is traced (docs/serving.md, "Tracing"): one span per HTTP request or gRPC call (``route``,
``model``, ``variant``), with children for the queue, a model load, prefill, decode and a tensor
inference; ``ff build`` is one span with a child per stage.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

AttrValue = str | int | float | bool
_OFF: Final = ("none", "")


class Span(Protocol):
    """What the server does with a span it started by hand (prefill, decode): label it, end it."""

    def set_attribute(self, key: str, value: AttrValue) -> None: ...

    def end(self) -> None: ...


class _NoSpan:
    def set_attribute(self, key: str, value: AttrValue) -> None:
        return None

    def end(self) -> None:
        return None


NO_SPAN: Final = _NoSpan()


def wanted(env: dict[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces to be exported."""
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in _OFF:
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def _protocol(env: dict[str, str]) -> str:
    proto = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    proto = (proto or "http/protobuf").strip().lower()
    if proto not in ("http/protobuf", "grpc"):
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={proto!r}: ff exports traces over 'http/protobuf' or 'grpc'"
        )
    return proto


def _make_tracer(service: str) -> Tracer:
    env = dict(os.environ)
    protocol = _protocol(env)
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
    except ImportError as exc:
        raise RuntimeError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({exc}); "
            "install ferrousforge[tracing], or unset the OTEL_* variables"
        ) from None
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over this default (Resource.create reads them).
    attrs = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(attrs))  # flushes and shuts down at exit
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider.get_tracer("ferrousforge")


class _State:
    tracer: Tracer | None = None
    configured = False


def configure(service: str) -> bool:
    """Set tracing up once per process from the environment (``ff serve`` and ``ff build`` call it at
    start); True when spans will be exported. Without the variables this imports nothing."""
    if not _State.configured:
        _State.configured = True
        _State.tracer = _make_tracer(service) if wanted() else None
    return _State.tracer is not None


def enabled() -> bool:
    return _State.tracer is not None


@contextlib.contextmanager
def span(name: str, **attrs: AttrValue) -> Iterator[Span]:
    """A child of the current span for the ``with`` block (a new root where there is none)."""
    tracer = _State.tracer
    if tracer is None:
        yield NO_SPAN
        return
    with tracer.start_as_current_span(name, attributes=attrs) as s:
        yield s


def start(name: str, **attrs: AttrValue) -> Span:
    """A span that ends when :meth:`Span.end` is called (a child of the current span)."""
    tracer = _State.tracer
    if tracer is None:
        return NO_SPAN
    return tracer.start_span(name, attributes=attrs)


def annotate(**attrs: AttrValue) -> None:
    """Set attributes on the current span (the request's, when the scheduler learns its variant)."""
    if _State.tracer is None:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    for key, value in attrs.items():
        current.set_attribute(key, value)
