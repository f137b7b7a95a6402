"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``) on ``FF_GRPC_PORT``.

It runs in ``ff serve``'s process, in uvicorn's event loop (``grpc.aio``, started and stopped by the
app's lifespan), over the same :class:`~ffserve.state.AppState` as the REST routes: the same models
(every model ``/v2`` serves), scheduler (queueing, batching in the runtime), API keys (metadata
``authorization: Bearer <key>``; ServerLive and ServerReady are open like ``/v2/health/*``), request
size limit (``FF_MAX_BODY_BYTES`` as the largest message received), metrics (``ff:grpc_responses`` by
method and code, and the model metrics REST records) and errors (:func:`ffserve.errors.grpc_status`,
next to the HTTP map). A client that cancels its call cancels the inference. Served: ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer, ModelStreamInfer (a stream's
requests inferred concurrently, each answered when done); Triton's other methods answer
UNIMPLEMENTED (the generated base class does that). grpc.aio costs ~0.25 ms of server CPU a unary
call and ~0.06 ms a streamed request (docs/benchmarks.md, "OIP over REST vs gRPC").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from ffruntime import tracing
from ffruntime.runtime import CancelFlag
from ffserve import __version__
from ffserve.errors import ServeError, Unauthorized, grpc_status
from ffserve.middleware import key_accepted
from ffserve.routes.ops import not_ready
from ffserve.routes.v2 import infer, model_metadata, tensor_runtime
from ffserve.settings import Settings
from ffserve.state import AppState
from ffserve.wire.v2_grpc import grpc_infer_response, grpc_metadata, parse_grpc_infer

log = logging.getLogger("ffserve.grpc")
T = TypeVar("T")
SERVICE = "/inference.GRPCInferenceService/"
UNAUTHORIZED = "a valid API key is required (metadata authorization: Bearer <key>)"


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, state: AppState, draining: Callable[[], bool]) -> None:
        self.e, self.draining = state, draining
        self.keys = [k.encode() for k in state.settings.api_keys]

    async def _call(
        self, method: str, context: Any, work: Callable[[], Awaitable[T]], *, open_: bool = False
    ) -> T:
        """Run one call's ``work`` with the key check, its span, its metric and the error map."""
        code = "OK"
        try:
            with tracing.span(f"grpc {method}", route=SERVICE + method):
                if not open_ and not self._authorized(context):
                    raise Unauthorized(UNAUTHORIZED)
                return await work()
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:
            code, message = grpc_status(exc)
            if code == "INTERNAL":
                log.exception("unhandled error in %s", method, exc_info=exc)
            elif not isinstance(exc, ServeError):
                log.info("%s: %s", method, message)
        finally:
            self.e.metrics.grpc_responses.labels(method, code).inc()
        await context.abort(grpc.StatusCode[code], message)
        raise AssertionError("context.abort returns only by raising")

    def _authorized(self, context: Any) -> bool:
        if not self.keys:
            return True
        metadata = dict(context.invocation_metadata() or ())
        auth = metadata.get("authorization", "")
        return key_accepted(self.keys, auth.encode() if isinstance(auth, str) else auth)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return pb.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, work, open_=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return pb.ServerReadyResponse(ready=not_ready(self.e, self.draining()) is None)

        return await self._call("ServerReady", context, work, open_=True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return pb.ServerMetadataResponse(name="ferrousforge", version=__version__, extensions=[])

        return await self._call("ServerMetadata", context, work)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            tensor_runtime(await self.e.scheduler.get(request.name))
            return pb.ModelReadyResponse(ready=True)

        return await self._call("ModelReady", context, work)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            model = await self.e.scheduler.get(request.name)
            return grpc_metadata(model_metadata(request.name, model))

        return await self._call("ModelMetadata", context, work)

    async def _infer(self, request: Any) -> Any:
        """One ``ModelInferRequest`` → its ``ModelInferResponse`` (ModelInfer's and each streamed one's)."""
        req, inputs = parse_grpc_infer(request)
        cancel = CancelFlag()
        try:
            done = await infer(self.e, request.model_name, req, inputs, cancel)
        except asyncio.CancelledError:  # the client cancelled the call (or went away)
            cancel.set()
            self.e.metrics.cancelled.labels(request.model_name).inc()
            raise
        return grpc_infer_response(request.model_name, req, done.outputs, done.order)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return await self._call("ModelInfer", context, lambda: self._infer(request))

    async def ModelStreamInfer(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        """Triton's streaming infer: each request of the stream is inferred as it comes, at most
        ``FF_MAX_QUEUE`` of a stream at once (they batch like separate calls), and answered when it is
        done (in the order they finish, with the request's ``id``); a request that fails is answered
        with its ``error_message`` and the stream goes on. The key is checked once, for the stream."""
        if not self._authorized(context):
            self.e.metrics.grpc_responses.labels("ModelStreamInfer", "UNAUTHENTICATED").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED)
        answers: asyncio.Queue[Any] = asyncio.Queue()
        room = asyncio.Semaphore(self.e.settings.max_queue)
        running: set[asyncio.Task[None]] = set()

        async def one(request: Any) -> None:
            try:
                answer = _Answer(request, answers)  # the key was checked for the stream
                reply = await self._call("ModelStreamInfer", answer, lambda: self._infer(request), open_=True)
                answers.put_nowait(pb.ModelStreamInferResponse(infer_response=reply))
            except _Answered:
                pass
            finally:
                room.release()

        async def read() -> None:
            try:
                async for request in requests:
                    await room.acquire()
                    task = asyncio.get_running_loop().create_task(one(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.gather(*running)
            finally:
                answers.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()


class _Answered(Exception):
    """A streamed request's error has been queued as its answer."""


class _Answer:
    """The ``context`` a streamed request's :meth:`InferenceService._call` aborts: the error becomes
    that request's answer (``error_message``) instead of the stream's end."""

    def __init__(self, request: Any, answers: asyncio.Queue[Any]) -> None:
        self.request, self.answers = request, answers

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        reply = pb.ModelInferResponse(model_name=self.request.model_name, id=self.request.id)
        self.answers.put_nowait(pb.ModelStreamInferResponse(error_message=message, infer_response=reply))
        raise _Answered


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc(state: AppState, settings: Settings, draining: Callable[[], bool]) -> aio.Server:
    """Start the gRPC server on ``settings.grpc_port`` in the running loop (0: a free port, logged)."""
    assert settings.grpc_port is not None
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state, draining), server)
    address = _address(settings.host, settings.grpc_port)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"gRPC: could not listen on {address} (FF_GRPC_PORT)")
    await server.start()
    log.info("Open Inference Protocol over gRPC on %s", _address(settings.host, port))
    return server
