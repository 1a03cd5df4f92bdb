"""The gRPC front: Open Inference Protocol v2 ``GRPCInferenceService`` on grpc.aio.

The servicer translates protobuf messages to and from the data plane; one interceptor maps
every :class:`InferenceError` to its gRPC status code (the table lives in errors.py), so no
method handles errors itself. The standard health service mirrors readiness, and server
reflection lets grpcurl and friends discover the API.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clawdbot_api.protocol import grpc_predict_v2_pb2 as pb
from clawdbot_api.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from clawdbot_runtime.dataplane import DataPlane, InferenceRequest, add_input
from clawdbot_runtime.errors import InferenceError, InvalidInput
from clawdbot_runtime.tensors import (
    CONTENTS_FIELD,
    Array,
    datatype_of,
    decode_contents,
    decode_raw,
    encode_raw,
)

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _parameter_value(param: pb.InferParameter) -> Any:
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def decode_infer_request(request: pb.ModelInferRequest) -> InferenceRequest:
    """Decode a ModelInferRequest (typed contents or raw_input_contents) into arrays."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    inputs: dict[str, Array] = {}
    for i, tensor in enumerate(request.inputs):
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{tensor.name}': contents and raw_input_contents are exclusive"
                )
            array = decode_raw(tensor.name, tensor.datatype, tensor.shape, raw[i])
        else:
            if tensor.datatype == "FP16":
                raise InvalidInput(f"input '{tensor.name}': FP16 must be sent as raw contents")
            field = CONTENTS_FIELD.get(tensor.datatype)
            values: Any = getattr(tensor.contents, field) if field else []
            array = decode_contents(tensor.name, tensor.datatype, tensor.shape, values)
        add_input(inputs, tensor.name, array)
    outputs = [o.name for o in request.outputs] or None
    return InferenceRequest(
        model_name=request.model_name,
        model_version=request.model_version or None,
        id=request.id,
        inputs=inputs,
        outputs=outputs,
        parameters={k: _parameter_value(v) for k, v in request.parameters.items()},
    )


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over the data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dataplane.live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dataplane.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        ready = self._dataplane.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self._dataplane.server_metadata())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        meta = self._dataplane.model_metadata(request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        async with self._dataplane.request_scope(request.model_name, "grpc"):
            result = await self._dataplane.execute(decode_infer_request(request))
        response = pb.ModelInferResponse(
            model_name=result.model_name, model_version=result.model_version, id=result.id
        )
        # Raw contents for every output, as Triton does: compact, and the only way FP16
        # can travel at all.
        for name, array in result.outputs.items():
            response.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
            response.raw_output_contents.append(encode_raw(array))
        return response


RpcHandler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps data plane errors to gRPC status codes: the one place this happens."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner: RpcHandler = handler.unary_unary

        async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except InferenceError as exc:
                await context.abort(exc.grpc_code, exc.message)

        return grpc.unary_unary_rpc_method_handler(
            mapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class GrpcFront:
    """The grpc.aio server with the inference, health and reflection services."""

    def __init__(
        self, dataplane: DataPlane, host: str, port: int, *, max_message_bytes: int
    ) -> None:
        self._dataplane = dataplane
        self.server = grpc.aio.server(
            interceptors=[ErrorMappingInterceptor()],
            options=[
                # The same limit as REST: grpc's 4 MiB default refuses ordinary image batches,
                # and a larger message is refused with RESOURCE_EXHAUSTED before decoding.
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        servicer = InferenceServicer(dataplane)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self.server)  # type: ignore[no-untyped-call]
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:  # grpc reports a taken port as RuntimeError
            raise OSError(f"cannot bind gRPC to {host}:{port}: {exc}") from exc
        if self.port == 0:  # older grpc releases return 0 instead of raising
            raise OSError(f"cannot bind gRPC to {host}:{port}")

    async def start(self) -> None:
        """Start serving (health NOT_SERVING until the data plane is ready)."""
        await self.server.start()
        await self.sync_health()

    async def sync_health(self) -> None:
        """Mirror data plane readiness into the gRPC health service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self._dataplane.ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting calls; let running ones finish for up to ``grace_s``."""
        await self.server.stop(grace_s)
