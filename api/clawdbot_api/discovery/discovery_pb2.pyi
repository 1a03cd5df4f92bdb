# mypy: ignore-errors
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeRequest(_message.Message):
    __slots__ = ("pod_namespace", "pod_name", "known_version")
    POD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    pod_namespace: str
    pod_name: str
    known_version: str
    def __init__(self, pod_namespace: _Optional[str] = ..., pod_name: _Optional[str] = ..., known_version: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("url", "model", "model_deployment", "revision")
    URL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    url: str
    model: str
    model_deployment: str
    revision: int
    def __init__(self, url: _Optional[str] = ..., model: _Optional[str] = ..., model_deployment: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("version", "policy_name", "policy_spec_json", "endpoints", "cloud_api_key", "audit_hmac_key", "cache_redis_password", "semantic_examples")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_API_KEY_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HMAC_KEY_FIELD_NUMBER: _ClassVar[int]
    CACHE_REDIS_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    version: str
    policy_name: str
    policy_spec_json: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    cloud_api_key: str
    audit_hmac_key: bytes
    cache_redis_password: str
    semantic_examples: str
    def __init__(self, version: _Optional[str] = ..., policy_name: _Optional[str] = ..., policy_spec_json: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., cloud_api_key: _Optional[str] = ..., audit_hmac_key: _Optional[bytes] = ..., cache_redis_password: _Optional[str] = ..., semantic_examples: _Optional[str] = ...) -> None: ...

class EndpointLoad(_message.Message):
    __slots__ = ("url", "model_deployment", "revision", "in_flight", "requests", "errors", "latency_p50_ms", "latency_p95_ms", "in_flight_seconds")
    URL_FIELD_NUMBER: _ClassVar[int]
    MODEL_DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    url: str
    model_deployment: str
    revision: int
    in_flight: int
    requests: int
    errors: int
    latency_p50_ms: float
    latency_p95_ms: float
    in_flight_seconds: float
    def __init__(self, url: _Optional[str] = ..., model_deployment: _Optional[str] = ..., revision: _Optional[int] = ..., in_flight: _Optional[int] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., in_flight_seconds: _Optional[float] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("pod_namespace", "pod_name", "unix_ms", "endpoints")
    POD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    pod_namespace: str
    pod_name: str
    unix_ms: int
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointLoad]
    def __init__(self, pod_namespace: _Optional[str] = ..., pod_name: _Optional[str] = ..., unix_ms: _Optional[int] = ..., endpoints: _Optional[_Iterable[_Union[EndpointLoad, _Mapping]]] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("interval_seconds",)
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: float
    def __init__(self, interval_seconds: _Optional[float] = ...) -> None: ...
