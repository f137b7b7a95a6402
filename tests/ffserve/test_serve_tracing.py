"""OpenTelemetry traces from a real ``ff serve`` and ``ff build``, exported over OTLP/HTTP (configured
only by ``OTEL_*`` variables) to a receiver this test runs, which decodes them with opentelemetry-proto;
and with the variables unset, no exporter and no OpenTelemetry module at all."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from registry.store import Store
from tests.ffserve.serve_testkit import ROOT, Server, start_server
from tests.models import add_model


@dataclass(frozen=True)
class Got:
    """One span as the receiver decoded it."""

    name: str
    trace: str
    span: str
    parent: str
    service: str
    attrs: dict[str, Any]


class Receiver:
    """A tiny OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[Got] = []
        self.lock = threading.Lock()
        self.grpc: Any = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces" and "protobuf" in self.headers.get("Content-Type", "")
                if ok:
                    receiver.add(ExportTraceServiceRequest.FromString(body))
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def serve_grpc(self) -> str:
        """Also receive OTLP over gRPC (TraceService/Export); returns its endpoint."""
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc

        receiver = self

        class Service(pb_grpc.TraceServiceServicer):
            def Export(self, request: ExportTraceServiceRequest, context: object) -> object:
                receiver.add(request)
                return pb.ExportTraceServiceResponse()

        from concurrent.futures import ThreadPoolExecutor

        self.grpc = grpc.server(ThreadPoolExecutor(2))
        pb_grpc.add_TraceServiceServicer_to_server(Service(), self.grpc)  # type: ignore[no-untyped-call]
        port = self.grpc.add_insecure_port("127.0.0.1:0")
        self.grpc.start()
        return f"http://127.0.0.1:{port}"

    def add(self, req: ExportTraceServiceRequest) -> None:
        for rs in req.resource_spans:
            service = next(
                (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), ""
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in s.attributes}
                    ids = (s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex())
                    with self.lock:
                        self.spans.append(Got(s.name, *ids, service, attrs))

    def wait_for(self, names: set[str], timeout: float = 30.0, tag: str = "") -> list[Got]:
        """The spans received once each of ``names`` has come (with ``tag`` in its attributes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = {s.name for s in self.spans if tag in str(s.attrs.values())}
                if names <= got:
                    return list(self.spans)
            time.sleep(0.1)
        raise AssertionError(f"spans {names} not all received; got {[s.name for s in self.spans]}")


OTEL = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.http.shutdown()
    if r.grpc is not None:
        r.grpc.stop(None)


@pytest.fixture(scope="module")
def traced_server(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, receiver: Receiver
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("tracehome")
    add_model(Store(home / "store"), "tiny:latest", {"q4_1": smollm2_gguf}, params={"temperature": 0.0})
    with start_server(
        home,
        tmp_path_factory.mktemp("tracelogs"),
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY=OTEL["OTEL_BSP_SCHEDULE_DELAY"],
        OTEL_EXPORTER_OTLP_PROTOCOL=OTEL["OTEL_EXPORTER_OTLP_PROTOCOL"],
    ) as s:
        yield s


def test_one_chat_request_is_one_trace_with_its_stages(traced_server: Server, receiver: Receiver) -> None:
    ai = openai.OpenAI(base_url=traced_server.url + "/v1", api_key="x", max_retries=0)
    r = ai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert r.choices[0].message.content
    spans = receiver.wait_for({"POST /v1/chat/completions", "model.load", "queue", "prefill", "decode"})
    root = next(s for s in spans if s.name == "POST /v1/chat/completions")
    trace = [s for s in spans if s.trace == root.trace]
    assert sorted(s.name for s in trace) == sorted(
        ["POST /v1/chat/completions", "model.load", "queue", "prefill", "decode"]
    )
    assert root.parent == "" and root.service == "ff-serve"
    assert root.attrs["route"] == "/v1/chat/completions" and root.attrs["model"] == "tiny:latest"
    assert root.attrs["variant"] == "q4_1-cpu" and root.attrs["http.response.status_code"] == 200
    assert all(s.parent == root.span for s in trace if s is not root)
    load = next(s for s in trace if s.name == "model.load")
    assert load.attrs == {"model": "tiny:latest", "variant": "q4_1-cpu"}
    assert next(s for s in trace if s.name == "decode").attrs["tokens"] >= 1
    # streamed: the same spans but the load (the model is loaded now), decode ending with the stream
    stream = ai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=4, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    deadline = time.monotonic() + 30
    while True:
        roots = [s for s in receiver.spans if s.name == "POST /v1/chat/completions" and s.trace != root.trace]
        streamed = [s.name for s in receiver.spans if roots and s.trace == roots[0].trace]
        if len(streamed) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sorted(streamed) == sorted(["POST /v1/chat/completions", "queue", "prefill", "decode"])
    # a health probe is a trace of its own, one span
    probes = [s for s in spans if s.name == "GET /health/live"]
    assert probes and all(s.parent == "" and s.trace != root.trace for s in probes)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_ff_build_is_a_trace_with_a_span_per_stage(receiver: Receiver, tmp_path: Path, protocol: str) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.onnx"))
    (tmp_path / "Modelfile").write_text("FROM model.onnx\nTASK tensor\n")
    env = {**os.environ, "FF_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), **OTEL}
    env["OTEL_EXPORTER_OTLP_PROTOCOL"] = protocol
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.serve_grpc() if protocol == "grpc" else receiver.url
    tag = f"ident:{protocol.replace('/', '-')}"
    cmd = [sys.executable, "-m", "ffcli", "build", "-f", str(tmp_path / "Modelfile"), "-t", tag]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    spans = receiver.wait_for({"ff build"}, tag=tag)  # the process flushed its spans at exit
    root = next(s for s in spans if s.name == "ff build" and s.attrs["reference"].endswith(tag))
    assert root.parent == "" and root.service == "ff-build"
    stages = [s for s in spans if s.trace == root.trace and s is not root]
    assert {"build.fetch", "build.package"} <= {s.name for s in stages}
    assert all(s.parent == root.span and s.name == f"build.{s.attrs['stage']}" for s in stages)


def test_without_otel_variables_nothing_is_created(tmp_path: Path) -> None:
    """A server's whole request path (middleware, scheduler, errors) with the variables unset: no
    exporter, no tracer, and no OpenTelemetry module imported."""
    script = """
import sys
from starlette.testclient import TestClient
from ffruntime import tracing
from ffserve.app import create_app
from ffserve.settings import Settings

with TestClient(create_app(Settings())) as c:
    assert c.get("/health/live").status_code == 200
    assert c.get("/v2/models/nope").status_code == 404
    assert c.get("/metrics").status_code == 200
assert not tracing.enabled()
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
print("no tracing")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(FF_HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0 and "no tracing" in proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "env, on",
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_which_variables_turn_tracing_on(env: dict[str, str], on: bool) -> None:
    from ffruntime import tracing

    assert tracing.wanted(env) is on
