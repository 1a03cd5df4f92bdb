"""The gRPC front of the sidecar: a thin adapter around the routing core, like the HTTP one.

Two services share one port, with health and server reflection:

* ``inference.GRPCInferenceService`` (Open Inference Protocol v2, the runtime's generated
  stubs) for clients that speak KServe/Triton: ``ModelInfer`` takes a BYTES ``text_input``
  (or ``prompt``) tensor, or a ``messages`` tensor holding a JSON array of chat messages, and
  answers a BYTES ``text_output`` tensor. ``max_tokens``, ``temperature`` and ``top_p`` come
  as request parameters. The decision comes back as the response parameters
  ``clawdbot_target`` / ``clawdbot_reason`` and as trailing metadata.
* ``clawdbot.sidecar.v1.Generate/Chat`` streams a routed chat completion as text deltas.

The call's metadata plays the part of HTTP headers for routing rules (tenant, priority).
One interceptor maps :class:`RequestError` to gRPC status codes; no method handles errors.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib import metadata
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clawdbot_api.openai_wire import loads
from clawdbot_api.protocol import grpc_predict_v2_pb2 as pb
from clawdbot_api.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from clawdbot_sidecar.accounting.feedback import FeedbackResult, parse_feedback
from clawdbot_sidecar.errors import RequestError
from clawdbot_sidecar.fronts.http import HEADER_TIMEOUT_S, KEEPALIVE_TIMEOUT_S, MAX_CONNECTIONS
from clawdbot_sidecar.protocol import generate_pb2 as gen
from clawdbot_sidecar.protocol import generate_pb2_grpc as gen_grpc
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.routing.request import (
    REASON_HEADER,
    REQUEST_ID_HEADER,
    TARGET_HEADER,
    Answer,
    ApiKind,
    Inbound,
)

INFERENCE_SERVICE: str = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
GENERATE_SERVICE: str = gen.DESCRIPTOR.services_by_name["Generate"].full_name
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVER_NAME = "clawdbot-sidecar"

# Tensor names, after Triton's text-generation backends (vLLM, TensorRT-LLM).
TEXT_INPUTS = ("text_input", "prompt")
MESSAGES_INPUT = "messages"
TEXT_OUTPUT = "text_output"
# Response parameters that carry the routing decision.
TARGET_PARAMETER = "clawdbot_target"
REASON_PARAMETER = "clawdbot_reason"

# HTTP statuses of RequestError as gRPC codes. 413 is the client's mistake, not a quota, so
# INVALID_ARGUMENT; 429 (the sidecar's concurrency limit) is RESOURCE_EXHAUSTED, which
# clients retry. Statuses not listed: other 4xx -> INVALID_ARGUMENT, other 5xx -> UNAVAILABLE.
GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC status code for an HTTP status the core raised."""
    if status in GRPC_CODES:
        return GRPC_CODES[status]
    return grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.UNAVAILABLE


def _version() -> str:
    try:
        return metadata.version("clawdbot")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def _headers(
    context: grpc.aio.ServicerContext, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The call's text metadata as request headers, ``extra`` merged over it."""
    headers = {
        key: value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str) and not key.startswith((":", "grpc-"))
    }
    headers.update({k.lower(): v for k, v in (extra or {}).items()})
    return headers


def _decision_metadata(answer: Answer) -> tuple[tuple[str, str], ...]:
    names = (TARGET_HEADER, REASON_HEADER, REQUEST_ID_HEADER)
    return tuple((name, answer.headers[name]) for name in names if answer.headers.get(name))


# -- Open Inference Protocol v2 -------------------------------------------------------------


def _parameter(param: pb.InferParameter) -> Any:
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def _one_string(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> str:
    """The single UTF-8 string a BYTES input tensor holds (typed or raw contents)."""
    name = tensor.name
    if tensor.datatype != "BYTES":
        raise RequestError(400, f"input '{name}' must be BYTES, not {tensor.datatype}", param=name)
    items: list[bytes]
    if raw is None:
        items = list(tensor.contents.bytes_contents)
    else:
        items = []
        offset = 0
        while offset < len(raw):  # each element advances at least 4 bytes
            start = offset + 4
            if start > len(raw):
                raise RequestError(400, f"input '{name}': truncated raw BYTES", param=name)
            (length,) = struct.unpack_from("<I", raw, offset)
            if start + length > len(raw):
                raise RequestError(400, f"input '{name}': raw BYTES overrun", param=name)
            items.append(raw[start : start + length])
            offset = start + length
    if len(items) != 1:
        raise RequestError(
            400, f"input '{name}' must hold exactly one string, got {len(items)}", param=name
        )
    try:
        return items[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"input '{name}' is not valid UTF-8: {exc}", param=name) from exc


def _input_text(request: pb.ModelInferRequest) -> tuple[str, str]:
    """The one text input of a ModelInferRequest: (tensor name, text)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError(
            400, f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    texts: dict[str, str] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name not in (*TEXT_INPUTS, MESSAGES_INPUT):
            raise RequestError(
                400,
                f"unknown input '{tensor.name}'; the sidecar takes a BYTES 'text_input' "
                "(or 'prompt') or a BYTES 'messages' holding a JSON array of chat messages",
                param=tensor.name,
            )
        texts[tensor.name] = _one_string(tensor, raw[i] if raw else None)
    if len(texts) != 1:
        raise RequestError(
            400, "give exactly one of the inputs 'text_input', 'prompt' or 'messages'"
        )
    for output in request.outputs:
        if output.name != TEXT_OUTPUT:
            raise RequestError(
                400, f"unknown output '{output.name}'; the only output is '{TEXT_OUTPUT}'"
            )

    ((name, text),) = texts.items()
    return name, text


def infer_request_body(request: pb.ModelInferRequest) -> tuple[ApiKind, dict[str, Any]]:
    """An OpenAI completions (or chat) body for a ModelInferRequest; RequestError if invalid."""
    name, text = _input_text(request)
    body: dict[str, Any] = {"model": request.model_name}
    kind = ApiKind.COMPLETIONS
    if name == MESSAGES_INPUT:
        try:
            body["messages"] = loads(text)
        except ValueError as exc:
            raise RequestError(
                400, f"input 'messages' is not valid JSON: {exc}", param=MESSAGES_INPUT
            ) from exc
        kind = ApiKind.CHAT
    else:
        body["prompt"] = text

    _add_sampling(body, {key: _parameter(value) for key, value in request.parameters.items()})
    return kind, body


def _add_sampling(body: dict[str, Any], params: Mapping[str, Any]) -> None:
    """Check the request parameters the sidecar passes on and add them to ``body``."""
    if params.get("stream") is True:
        raise RequestError(
            400,
            f"ModelInfer answers in one response; stream with {GENERATE_SERVICE}/Chat",
            param="stream",
        )
    if (max_tokens := params.get("max_tokens")) is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(
                400, "parameter max_tokens must be a positive integer", param="max_tokens"
            )
        body["max_tokens"] = max_tokens
    for number in ("temperature", "top_p"):
        if (value := params.get(number)) is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RequestError(400, f"parameter {number} must be a number", param=number)
            body[number] = float(value)
    # Other parameters (Triton's priority, timeout, sequence ids...) mean nothing here.


def _answer_text(kind: ApiKind, body: Mapping[str, Any]) -> tuple[str, str]:
    """The text and finish reason of the first choice of an OpenAI answer."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    if kind == ApiKind.CHAT:
        message = choice.get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    return (text if isinstance(text, str) else ""), str(choice.get("finish_reason") or "")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over the routing core: text generation with routing."""

    def __init__(self, front: GrpcFront) -> None:
        self._front = front
        self._core = front.core

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self._front.draining)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        known = request.name in self._core.models()
        return pb.ModelReadyResponse(ready=known and not self._front.draining)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=_version(), extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        models = self._core.models()
        if request.name not in models:
            raise RequestError(
                404,
                f"unknown model '{request.name}'; the sidecar routes to: "
                f"{', '.join(models) or 'nothing yet'}",
                param="name",
            )
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            platform=f"clawdbot-{models[request.name]}",
            inputs=[
                tensor(name=TEXT_INPUTS[0], datatype="BYTES", shape=[1]),
                tensor(name=MESSAGES_INPUT, datatype="BYTES", shape=[1]),
            ],
            outputs=[tensor(name=TEXT_OUTPUT, datatype="BYTES", shape=[1])],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        kind, body = infer_request_body(request)
        answer = await self._core.handle(Inbound(kind, body, _headers(context)))
        if answer.body is None:  # not asked to stream, so the core answers with a body
            raise RequestError(502, "the routing core answered with a stream")
        text, finish_reason = _answer_text(kind, answer.body)
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        output = response.outputs.add(name=TEXT_OUTPUT, datatype="BYTES", shape=[1])
        encoded = text.encode("utf-8")
        # Answer in the form the client asked in: raw contents for raw, typed otherwise.
        if request.raw_input_contents:
            response.raw_output_contents.append(struct.pack("<I", len(encoded)) + encoded)
        else:
            output.contents.bytes_contents.append(encoded)
        response.parameters[TARGET_PARAMETER].string_param = answer.headers.get(TARGET_HEADER, "")
        response.parameters[REASON_PARAMETER].string_param = answer.headers.get(REASON_HEADER, "")
        if finish_reason:
            response.parameters["finish_reason"].string_param = finish_reason
        usage = answer.body.get("usage")
        if isinstance(usage, dict):
            for key in ("prompt_tokens", "completion_tokens"):
                if isinstance(usage.get(key), int):
                    response.parameters[key].int64_param = usage[key]
        context.set_trailing_metadata(_decision_metadata(answer))
        return response


# -- clawdbot.sidecar.v1.Generate ----------------------------------------------------------


def chat_request_body(request: gen.ChatRequest) -> dict[str, Any]:
    """The streaming OpenAI chat body for a ChatRequest (the core validates it)."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
        # Usage comes in a last event of its own, passed on as the last chunk's usage.
        "stream_options": {"include_usage": True},
    }
    if request.HasField("max_tokens"):
        body["max_tokens"] = request.max_tokens
    if request.HasField("temperature"):
        body["temperature"] = request.temperature
    return body


def _chunk(event: Mapping[str, Any]) -> gen.ChatChunk | None:
    """The ChatChunk for one streamed chat event; None for an event that carries nothing."""
    chunk = gen.ChatChunk(model=str(event.get("model") or ""))
    choices = event.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        chunk.delta = content if isinstance(content, str) else ""
        chunk.finish_reason = str(choices[0].get("finish_reason") or "")
    usage = event.get("usage")
    if isinstance(usage, dict):
        chunk.usage.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        chunk.usage.completion_tokens = int(usage.get("completion_tokens") or 0)
    if not (chunk.delta or chunk.finish_reason or chunk.HasField("usage")):
        return None
    return chunk


class GenerateServicer(gen_grpc.GenerateServicer):
    """clawdbot.sidecar.v1.Generate over the routing core."""

    def __init__(self, core: RoutingCore) -> None:
        self._core = core

    async def Feedback(
        self, request: gen.FeedbackRequest, context: grpc.aio.ServicerContext
    ) -> gen.FeedbackReply:
        body = {"request_id": request.answer_id, "score": request.score}
        answer_id, score = parse_feedback(body)  # a 400 becomes INVALID_ARGUMENT
        result = self._core.feedback(answer_id, score)
        if result == FeedbackResult.UNKNOWN:
            raise RequestError(404, f"no answer {answer_id!r} awaits feedback")
        if result == FeedbackResult.DUPLICATE:
            raise RequestError(409, f"answer {answer_id!r} was scored already")
        return gen.FeedbackReply(status=result.value)

    async def Chat(
        self, request: gen.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gen.ChatChunk]:
        headers = _headers(context, request.headers)
        answer = await self._core.handle(Inbound(ApiKind.CHAT, chat_request_body(request), headers))
        context.set_trailing_metadata(_decision_metadata(answer))
        first = gen.ChatChunk(
            target=answer.headers.get(TARGET_HEADER, ""),
            reason=answer.headers.get(REASON_HEADER, ""),
            request_id=answer.headers.get(REQUEST_ID_HEADER, ""),
            answer_id=answer.answer_id,
        )
        stream = answer.chunks
        if stream is None:  # an answer from a body (e.g. a cache): one chunk holds it all
            text, finish_reason = _answer_text(ApiKind.CHAT, answer.body or {})
            first.delta, first.finish_reason = text, finish_reason
            yield first
            return
        pending: gen.ChatChunk | None = first
        try:
            # A stream that breaks off raises StreamBroken: the interceptor maps it.
            async for event in stream:
                chunk = _chunk(event)
                if chunk is None:
                    continue
                if pending is not None:  # the decision rides on the first chunk
                    pending.MergeFrom(chunk)
                    chunk, pending = pending, None
                yield chunk
            if pending is not None:  # an empty answer still tells where it went
                yield pending
        finally:
            # A cancelled call stops reading mid-stream; closing lets the core account it.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()


# -- errors, health, the server -------------------------------------------------------------

RpcHandler = Callable[[Any, grpc.aio.ServicerContext], Any]


async def _abort(context: grpc.aio.ServicerContext, exc: RequestError) -> None:
    trailing = ((REASON_HEADER, exc.reason),) if exc.reason else ()
    await context.abort(grpc_code(exc.status), exc.message, trailing_metadata=trailing)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps the core's RequestError to a gRPC status: the one place this happens."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            unary: RpcHandler = handler.unary_unary

            async def mapped_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await unary(request, context)
                except RequestError as exc:
                    await _abort(context, exc)

            return grpc.unary_unary_rpc_method_handler(
                mapped_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            streaming: RpcHandler = handler.unary_stream

            async def mapped_stream(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    async for item in streaming(request, context):
                        yield item
                except RequestError as exc:
                    await _abort(context, exc)

            return grpc.unary_stream_rpc_method_handler(
                mapped_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # health and reflection raise no RequestError


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcFront:
    """The grpc.aio server: inference, generate, health and reflection on one port.

    Bounded like the HTTP front (tests pass shorter limits): a connection must finish its
    HTTP/2 handshake within ``handshake_timeout_s`` (slow-loris), one idle for
    ``idle_timeout_s`` is closed with GOAWAY (clients reconnect on their next call), and
    past ``max_connections`` new connections are refused until one of those frees a slot.
    """

    def __init__(
        self,
        core: RoutingCore,
        host: str,
        port: int,
        *,
        handshake_timeout_s: float = HEADER_TIMEOUT_S,
        idle_timeout_s: float = KEEPALIVE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.core = core
        self.draining = False
        self._serving_task: asyncio.Task[None] | None = None
        self.server = grpc.aio.server(
            interceptors=[ErrorMappingInterceptor()],
            options=[
                # The HTTP front's body limit; a larger message is refused with
                # RESOURCE_EXHAUSTED before it is decoded.
                ("grpc.max_receive_message_length", core.config.limits.max_body_bytes),
                # gRPC's own defaults: 120 s for a handshake, no idle limit, no cap.
                ("grpc.server_handshake_timeout_ms", int(handshake_timeout_s * 1000)),
                ("grpc.max_connection_idle_ms", int(idle_timeout_s * 1000)),
                ("grpc.max_allowed_incoming_connections", max_connections),
            ],
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self), self.server)  # type: ignore[no-untyped-call]
        gen_grpc.add_GenerateServicer_to_server(GenerateServicer(core), self.server)  # type: ignore[no-untyped-call]
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (INFERENCE_SERVICE, GENERATE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME),
            self.server,
        )
        self.port: int = self.server.add_insecure_port(_address(host, port))
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {_address(host, port)}")

    async def start(self, synced: asyncio.Event | None = None) -> None:
        """Start serving; health reports SERVING once ``synced`` is set (at once if None)."""
        await self.server.start()
        if synced is None or synced.is_set():
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)
            return
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._serving_task = asyncio.create_task(self._serve_when(synced))

    async def _serve_when(self, synced: asyncio.Event) -> None:
        await synced.wait()
        if not self.draining:
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def drain(self) -> None:
        """Report NOT_SERVING (health, ServerReady) so no new traffic is sent; keep serving."""
        self.draining = True
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls; let running ones finish for up to ``grace_s``."""
        if self._serving_task is not None:
            self._serving_task.cancel()
        await self.server.stop(grace_s)

    async def _set_health(self, status: Any) -> None:
        for service in ("", INFERENCE_SERVICE, GENERATE_SERVICE):
            await self.health.set(service, status)
