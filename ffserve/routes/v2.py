"""Open Inference Protocol v2 routes (``/v2/*``): server and model metadata, readiness, inference.

Every model with the tensor capability answers: tensor graphs with their own inputs and outputs,
embedding models with one BYTES ``text`` input. Model names are store references (``iris``,
``minilm:latest``, ``host/ns/name:tag``), so the model routes take the rest of the path and split off
``/versions/<v>``, ``/ready`` and ``/infer`` themselves. API keys, body limits and access logs come
from the shared middleware; errors are ``{"error": …}`` (400 bad input, 404 unknown model, 503 queue
full or not ready); a client that goes away cancels its request. The OIP over gRPC
(:mod:`ffserve.grpc_server`) runs the same :func:`infer`, :func:`model_metadata` and
:func:`tensor_runtime`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ffruntime import tracing
from ffruntime.runtime import CancelFlag, Tensor, TensorRuntime, TensorSpec
from ffserve import __version__
from ffserve.encoding import JSONResponse
from ffserve.errors import ModelNotFound, NotSupported
from ffserve.generation import GONE, ClientGone, until_disconnected
from ffserve.routes.ops import ready as server_ready
from ffserve.scheduler import Loaded
from ffserve.state import AppState, app_state
from ffserve.wire.v2 import HEADER_LENGTH, InferRequest, infer_response, parse_infer

PLATFORMS: Final = {"onnxruntime": "onnxruntime_onnx", "tvm": "tvm", "tensorrt": "tensorrt_plan"}


async def server_metadata(request: Request) -> Response:
    return JSONResponse(
        {"name": "ferrousforge", "version": __version__, "extensions": ["binary_tensor_data"]}
    )


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    answer = await server_ready(request)
    return JSONResponse({"ready": answer.status_code == 200}, status_code=answer.status_code)


def _split(rest: str) -> tuple[str, str]:
    """``name[/versions/v][/ready|/infer]`` → (name, action)."""
    action = ""
    for suffix in ("/ready", "/infer"):
        if rest.endswith(suffix):
            rest, action = rest[: -len(suffix)], suffix[1:]
            break
    head, sep, version = rest.rpartition("/versions/")
    if sep and version and "/" not in version:
        rest = head
    if not rest:
        raise ModelNotFound("no model named in the path")
    return rest, action


def tensor_runtime(model: Loaded) -> TensorRuntime:
    rt = model.tensor_runtime
    if rt is None:
        raise NotSupported(
            f"{model.name} is not a tensor model (it has no Open Inference Protocol interface)"
        )
    return rt


def model_metadata(name: str, model: Loaded) -> dict[str, object]:
    """A model's OIP metadata (REST's body; gRPC's ModelMetadataResponse is made from it)."""
    rt = tensor_runtime(model)
    backend = model.resolved.variant.backend

    def specs(items: tuple[TensorSpec, ...]) -> list[dict[str, object]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in items]

    return {
        "name": name,
        "versions": ["1"],
        "platform": PLATFORMS.get(backend, backend),
        "inputs": specs(rt.tensor_inputs),
        "outputs": specs(rt.tensor_outputs),
    }


@dataclass(frozen=True)
class Inferred:
    label: str  # the loaded model's name (the metrics' label)
    outputs: Mapping[str, Tensor]
    order: list[str]  # the outputs to answer, in order


async def infer(
    e: AppState, name: str, req: InferRequest, inputs: dict[str, Tensor], cancel: CancelFlag
) -> Inferred:
    """One inference through the scheduler (queueing, batching in the runtime) with its metrics: what
    REST's ``/infer`` and gRPC's ModelInfer both run. A caller whose client went away sets ``cancel``
    and counts it (``ff:requests_cancelled``)."""
    wanted = [o.name for o in req.outputs] if req.outputs else None
    t0 = time.perf_counter()
    async with e.scheduler.slot(name) as model:
        rt = tensor_runtime(model)
        with tracing.span("infer"):
            outputs = await rt.infer(inputs, cancel, wanted)
        done = Inferred(model.name, outputs, wanted or [s.name for s in rt.tensor_outputs])
    e.metrics.e2e.labels(done.label).observe(time.perf_counter() - t0)
    e.metrics.finished.labels(done.label, "stop").inc()
    return done


async def _infer(request: Request, e: AppState, name: str) -> Response:
    body = await request.body()
    req, inputs = parse_infer(body, request.headers.get(HEADER_LENGTH))
    cancel = CancelFlag()
    try:
        done = await until_disconnected(request, infer(e, name, req, inputs, cancel))
    except ClientGone:
        cancel.set()
        e.metrics.cancelled.labels(name).inc()
        return GONE
    payload, head = infer_response(name, req, done.outputs, done.order)
    if head is None:
        return Response(payload, media_type="application/json")
    return Response(
        payload, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(head)}
    )


async def model_route(request: Request) -> Response:
    e = app_state(request)
    name, action = _split(request.path_params["rest"])
    if action == "infer":
        if request.method != "POST":
            return JSONResponse({"error": "infer takes POST"}, status_code=405)
        return await _infer(request, e, name)
    if request.method != "GET":
        return JSONResponse({"error": f"{action or 'metadata'} takes GET"}, status_code=405)
    model = await e.scheduler.get(name)
    if action == "ready":
        tensor_runtime(model)
        return JSONResponse({"name": name, "ready": True})
    return JSONResponse(model_metadata(name, model))


ROUTES = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/models/{rest:path}", model_route, methods=["GET", "POST"]),
]
