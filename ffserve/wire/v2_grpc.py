"""Open Inference Protocol v2 over gRPC: ``ModelInferRequest`` → the REST request model and its checked
tensors, and outputs → ``ModelInferResponse``.

The request is made into the same document REST's JSON header is (:func:`ffserve.wire.v2.validate_request`)
and its tensors go through the same :func:`ffserve.wire.v2.input_tensors`, so a bad tensor is refused
by one piece of code whichever protocol carried it. Inputs come either all as ``raw_input_contents``
(one entry per input, in order: what ``tritonclient.grpc`` sends) or as typed ``contents``; outputs are
always returned as ``raw_output_contents`` (as Triton does), BYTES length-prefixed as in the binary
tensor extension.

The message types are those ``tritonclient[grpc]`` ships (``tritonclient.grpc.service_pb2``, package
``inference``: the protocol's ``GRPCInferenceService``; docs/serving.md says why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from tritonclient.grpc import service_pb2 as pb

from ffruntime.runtime import Tensor
from ffruntime.tensors import encode_bytes
from ffserve.errors import BadRequest
from ffserve.wire.v2 import InferRequest, InputTensor, Param, input_tensors, validate_request

CONTENTS: Final = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""OIP datatype → the typed field of ``InferTensorContents`` that carries it (FP16 and BF16: raw only)."""


def _params(params: Mapping[str, Any]) -> dict[str, Param]:
    out: dict[str, Param] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(p, which)
    return out


def _typed(t: Any) -> list[Any] | None:
    """An input's typed ``contents`` as a list (None when it has none, or BYTES: those stay bytes)."""
    field = CONTENTS.get(t.datatype)
    if field is None or field == "bytes_contents" or not t.HasField("contents"):
        return None
    values = getattr(t.contents, field)
    return list(values) if len(values) else None


def parse_grpc_infer(request: Any) -> tuple[InferRequest, dict[str, Tensor]]:
    """A ``ModelInferRequest`` → the request and its inputs as :data:`Tensor` s (a 400 when they are bad)."""
    raw = request.raw_input_contents
    if len(raw) and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs "
            "(one per input, in order, or none)"
        )
    doc: dict[str, Any] = {
        "id": request.id or None,
        "parameters": _params(request.parameters),
        "inputs": [
            {
                "name": t.name,
                "shape": list(t.shape),
                "datatype": t.datatype,
                "parameters": _params(t.parameters),
                "data": _typed(t),
            }
            for t in request.inputs
        ],
        "outputs": [{"name": o.name, "parameters": _params(o.parameters)} for o in request.outputs] or None,
    }
    req = validate_request(doc)

    def raw_for(i: int, t: InputTensor) -> bytes | None:
        proto = request.inputs[i]
        has_contents = proto.HasField("contents")
        if len(raw):
            if has_contents:
                raise BadRequest(f"input {t.name} has both contents and raw_input_contents")
            return bytes(raw[i])
        if t.datatype == "BYTES" and has_contents and len(proto.contents.bytes_contents):
            return encode_bytes(list(proto.contents.bytes_contents))
        if t.data is None and t.datatype in ("FP16", "BF16"):
            raise BadRequest(f"input {t.name}: {t.datatype} travels only in raw_input_contents")
        return None

    return req, input_tensors(req, raw_for)


def grpc_infer_response(
    model: str, req: InferRequest, outputs: Mapping[str, Tensor], order: Sequence[str]
) -> Any:
    """The ``ModelInferResponse`` with ``order``'s outputs, their bytes in ``raw_output_contents``."""
    reply = pb.ModelInferResponse(model_name=model, model_version="1", id=req.id or "")
    for name in order:
        datatype, shape, raw = outputs[name]
        reply.outputs.add(name=name, datatype=datatype, shape=shape)
        reply.raw_output_contents.append(raw)
    return reply


def grpc_metadata(doc: Mapping[str, Any]) -> Any:
    """REST's model metadata (:func:`ffserve.routes.v2.model_metadata`) as ``ModelMetadataResponse``."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=doc["name"],
        versions=doc["versions"],
        platform=doc["platform"],
        inputs=[tensor(**spec) for spec in doc["inputs"]],
        outputs=[tensor(**spec) for spec in doc["outputs"]],
    )
