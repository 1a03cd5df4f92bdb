"""Errors of the data plane, and the one table that maps them to HTTP and gRPC status codes.

Both protocol fronts raise and catch only these; the REST middleware and the gRPC
interceptor read ``http_status`` / ``grpc_code`` from here, so a new error kind is mapped
in exactly one place.
"""

from __future__ import annotations

import grpc


class InferenceError(Exception):
    """Base class: a request the data plane could not serve, with a message safe to return."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    # The OpenAI error "type" field, used by the /v1 front.
    openai_type = "server_error"
    # The OpenAI error "code" field, where OpenAI has one for the case.
    openai_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The request field the error is about, when there is one (OpenAI's "param").
        self.param = param


class InvalidInput(InferenceError):
    """The request is malformed or does not match the model's inputs."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    openai_type = "invalid_request_error"


class ContextLengthExceeded(InvalidInput):
    """The prompt leaves no room in the model's context for a single generated token."""

    openai_code = "context_length_exceeded"


class ModelNotFound(InferenceError):
    """No model (or no such version of it) is in the repository."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    openai_type = "invalid_request_error"
    openai_code = "model_not_found"


class ModelNotReady(InferenceError):
    """The model exists but is loading, warming up, or failed to load."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    openai_type = "server_error"


class ServerDraining(InferenceError):
    """The server is shutting down and takes no new work."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    openai_type = "server_error"


class QueueFull(InferenceError):
    """The model's request queue is full: back off and retry (or try another replica)."""

    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    openai_type = "rate_limit_error"
    openai_code = "rate_limit_exceeded"


class RequestTooLarge(InferenceError):
    """The request body is larger than the server accepts."""

    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    openai_type = "invalid_request_error"


class ModelLoadError(InferenceError):
    """A model file could not be loaded (corrupt, unsupported operator, wrong provider)."""

    http_status = 400
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    openai_type = "invalid_request_error"


class ExecutionError(InferenceError):
    """onnxruntime failed while running a model on inputs that passed validation."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    openai_type = "server_error"


class ProviderUnavailable(RuntimeError):
    """Start-up error: the accelerator's execution provider is missing from onnxruntime."""
