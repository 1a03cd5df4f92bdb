"""The sidecar's domain errors: a request refused or not answerable, in OpenAI's vocabulary.

The routing core and its targets raise only these; each front maps them in one place (the
REST front to an HTTP status and OpenAI's error body, the gRPC front's interceptor to a
status code). ``status`` is the HTTP status OpenAI's API would use for the case, which is
how OpenAI itself names its error classes; ``reason`` is what metrics and the audit log
record (never the request's content).

Plugins refuse a request on purpose by raising :class:`RequestError` from ``before_route``.
"""

from __future__ import annotations

from typing import Any

from clawdbot_api.openai_wire import error_body

__all__ = [
    "Overloaded",
    "PolicyRefused",
    "RequestError",
    "SensitiveDataBlocked",
    "StreamBroken",
    "Unavailable",
    "UpstreamFailed",
    "invalid",
]


class RequestError(Exception):
    """A request the sidecar refuses or can't answer; the message is safe to return."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.reason = reason

    def body(self) -> dict[str, Any]:
        """OpenAI's error document for this error."""
        return error_body(self.message, type_=self.type, param=self.param, code=self.code)


def invalid(message: str, param: str | None = None) -> RequestError:
    """A malformed request (400), naming the field when there is one."""
    return RequestError(400, message, param=param)


class PolicyRefused(RequestError):
    """The routing policy rejects this request (a rule or the default target is reject)."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            403,
            f"the routing policy refused this request ({reason})",
            type_="policy_error",
            code="rejected",
            reason=reason,
        )


class SensitiveDataBlocked(RequestError):
    """The request holds data the policy keeps from the cloud, and local can't answer it."""

    def __init__(self, message: str, *, reason: str = "redaction-block") -> None:
        super().__init__(400, message, code="sensitive_data_blocked", reason=reason)


class Overloaded(RequestError):
    """The sidecar is at its concurrency limit (backpressure: retry shortly)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            429,
            f"the sidecar is at its limit of {limit} requests in progress; retry shortly",
            type_="rate_limit_error",
            code="overloaded",
        )


class Unavailable(RequestError):
    """No target can take the request now (503: retry later)."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            503,
            f"no target can answer this request now ({reason}); retry later",
            type_="service_unavailable",
            code="unavailable",
            reason=reason,
        )


class UpstreamFailed(RequestError):
    """Every target that was tried failed (502), or none was left to try (503)."""

    def __init__(self, status: int, target: str, what: str) -> None:
        super().__init__(
            status,
            f"no upstream could answer ({target or 'none'}: {what}); retry later",
            type_="upstream_error",
            code="upstream_unavailable",
            reason="upstream-failed",
        )


class StreamBroken(RequestError):
    """A streamed answer broke off after it began; the front reports it in-band."""

    def __init__(self, what: str, kind: str) -> None:
        super().__init__(
            502,
            f"upstream stream broke: {what}",
            type_="upstream_error",
            code="stream_broken",
            reason=kind,
        )
