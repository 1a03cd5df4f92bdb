"""Who may read the external metrics API: the API server's aggregator, on behalf of a user
allowed to get that metric in that namespace, as Kubernetes' own metrics servers decide it.

The metrics API listens on every address of the operator's pod, and its answers drive the
HPAs; it must not serve whoever connects. A request is served when

1. authentication: it comes over TLS with a client certificate signed by the aggregator's
   front-proxy CA (``requestheader-client-ca-file``) whose common name is one of
   ``requestheader-allowed-names`` (any, when that list is empty), and names its user in one
   of ``requestheader-username-headers`` (groups and extras in the group and extra headers).
   The API server publishes all of these in the ConfigMap
   ``kube-system/extension-apiserver-authentication``; the operator reads it at start and
   every ``REFRESH_S``. Only the aggregator holds that certificate: a direct caller (another
   pod, anyone on the node network) is refused with 401 whatever headers it sends;
2. authorization of metric values: a SubjectAccessReview for that user says yes to
   ``list`` of the metric as a resource of ``external.metrics.k8s.io`` in the request's
   namespace: what the API server itself checked before proxying (a GET of the namespace's
   metric is a list), asked again because a request that reaches this port is only known to
   come from the aggregator, not what the API server allowed. The HPA controller's bootstrap
   role allows it everywhere; a user needs a Role or ClusterRole. Answers are cached
   ``DECISION_TTL_S``. Discovery and OpenAPI paths, which name the metrics but hold no
   values, are served to any request the front proxy authenticated (the aggregator asks for
   them as itself, in no group RBAC knows).

Narrower than the API server's own delegated authentication on purpose: no bearer tokens
and no direct client certificates, since only the aggregator has a reason to call. Health
paths (``/healthz``, ``/livez``, ``/readyz``) answer anyone, for probes. ``POST
/loadreports``, when enabled, stays unauthenticated (see ``metrics_api``).

Until the ConfigMap has been read, every request but the health paths is refused (401).
A rotated front-proxy CA is added to the trusted ones as soon as it is read; the old one is
trusted until the operator restarts (an SSL context can only gain CAs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from kubernetes_asyncio import client

log = logging.getLogger("clawdbot.operator.metrics_auth")

CONFIGMAP_NAMESPACE: Final = "kube-system"
CONFIGMAP_NAME: Final = "extension-apiserver-authentication"
REFRESH_S: Final = 300.0
RETRY_S: Final = 10.0
DECISION_TTL_S: Final = 10.0
DECISION_CACHE_MAX: Final = 4096
OPEN_PATHS: Final = frozenset({"/healthz", "/livez", "/readyz"})

# (namespace, name) -> the ConfigMap, or None when missing; raises when it can't tell.
ConfigMapReader = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]


@dataclass(frozen=True)
class FrontProxy:
    """How the aggregator proves itself and says who it speaks for."""

    client_ca: str
    """PEM of the CA that signs the aggregator's client certificate."""
    allowed_names: tuple[str, ...] = ()
    """Common names a client certificate may have (empty: any)."""
    username_headers: tuple[str, ...] = ("X-Remote-User",)
    group_headers: tuple[str, ...] = ("X-Remote-Group",)
    extra_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)

    @classmethod
    def from_configmap(cls, configmap: Mapping[str, Any] | None) -> FrontProxy | None:
        """The front-proxy settings of ``extension-apiserver-authentication`` (None when
        the API server publishes no front-proxy CA, i.e. runs without aggregation)."""
        data = (configmap or {}).get("data") or {}
        ca = data.get("requestheader-client-ca-file")
        if not ca:
            return None

        def names(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            raw = data.get(key)
            try:
                value = json.loads(raw) if raw else None
            except ValueError:
                value = None
            return tuple(str(v) for v in value) if isinstance(value, list) else default

        return cls(
            client_ca=ca,
            allowed_names=names("requestheader-allowed-names", ()),
            username_headers=names("requestheader-username-headers", ("X-Remote-User",)),
            group_headers=names("requestheader-group-headers", ("X-Remote-Group",)),
            extra_prefixes=names("requestheader-extra-headers-prefix", ("X-Remote-Extra-",)),
        )


@dataclass(frozen=True)
class User:
    """The user the aggregator forwards a request for."""

    name: str
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


def common_name(peercert: Mapping[str, Any] | None) -> str | None:
    """The subject CN of a verified peer certificate (Python's ``getpeercert()`` form)."""
    for rdn in (peercert or {}).get("subject") or ():
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def authenticate(
    proxy: FrontProxy | None, peercert: Mapping[str, Any] | None, headers: Any
) -> User | str:
    """The forwarded user, or why the request is refused. ``peercert`` is what TLS
    verified against the front-proxy CA (empty: no certificate, or not that CA's);
    ``headers`` a multi-dict (``getall``)."""
    if proxy is None:
        return (
            f"cannot authenticate yet: {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} (the "
            "aggregator's front-proxy CA) has not been read"
        )
    if not peercert:
        return "a client certificate of the API server's front proxy is required"
    name = common_name(peercert)
    if proxy.allowed_names and name not in proxy.allowed_names:
        return f"client certificate {name!r} is not one of the front proxy's allowed names"
    user = next((headers.get(h) for h in proxy.username_headers if headers.get(h)), None)
    if not user:
        return "the front proxy named no user"
    groups = tuple(g for h in proxy.group_headers for g in headers.getall(h, ()))
    extra: dict[str, list[str]] = {}
    for key in headers:
        prefix = next((p for p in proxy.extra_prefixes if key.lower().startswith(p.lower())), None)
        if prefix is not None:
            extra_key = urllib.parse.unquote(key[len(prefix) :]).lower()
            extra[extra_key] = list(dict.fromkeys(headers.getall(key)))
    return User(str(user), groups, tuple((k, tuple(v)) for k, v in sorted(extra.items())))


@dataclass(frozen=True)
class Access:
    """What a request asks to do, as a SubjectAccessReview spells it."""

    namespace: str = ""
    resource: str = ""
    """The metric (a resource of external.metrics.k8s.io); "" for a path without values."""
    path: str = ""


def access_for(path: str) -> Access:
    """What a GET of ``path`` reads: a metric in a namespace, or a path without values."""
    parts = path.strip("/").split("/")
    if len(parts) == 6 and parts[:4] == [
        "apis",
        "external.metrics.k8s.io",
        "v1beta1",
        "namespaces",
    ]:
        return Access(namespace=parts[4], resource=parts[5])
    return Access(path=path)


# (user, access) -> (allowed, when decided); SAR answers are cheap to keep, costly to ask.
_Decisions = dict[tuple[User, Access], tuple[bool, float]]


@dataclass
class MetricsAuth:
    """Authentication and authorization of the metrics API; see the module docstring."""

    read_configmap: ConfigMapReader
    review: Callable[[User, Access], Awaitable[bool]]
    monotonic: Callable[[], float] = time.monotonic
    proxy: FrontProxy | None = None
    _contexts: list[ssl.SSLContext] = field(default_factory=list)
    _trusted: set[str] = field(default_factory=set)
    _decisions: _Decisions = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    @classmethod
    def for_api(cls, api: client.ApiClient, read_configmap: ConfigMapReader) -> MetricsAuth:
        """Authorization by SubjectAccessReview through the operator's API client."""
        authorization = client.AuthorizationV1Api(api)

        async def review(user: User, access: Access) -> bool:
            spec = client.V1SubjectAccessReviewSpec(
                user=user.name,
                groups=list(user.groups),
                extra={k: list(v) for k, v in user.extra},
            )
            spec.resource_attributes = client.V1ResourceAttributes(
                group="external.metrics.k8s.io", version="v1beta1",
                resource=access.resource, namespace=access.namespace, verb="list",
            )  # fmt: skip
            result = await authorization.create_subject_access_review(
                client.V1SubjectAccessReview(spec=spec)
            )
            return bool(result.status and result.status.allowed)

        return cls(read_configmap, review)

    def bind(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """Make ``context`` ask clients for a certificate and trust the front-proxy CA(s)
        read so far (and those read later)."""
        context.verify_mode = ssl.CERT_OPTIONAL
        for ca in self._trusted:
            context.load_verify_locations(cadata=ca)
        self._contexts.append(context)
        return context

    async def load(self) -> bool:
        """Read the front-proxy settings once; True when they are known afterwards."""
        try:
            proxy = FrontProxy.from_configmap(
                await self.read_configmap(CONFIGMAP_NAMESPACE, CONFIGMAP_NAME)
            )
        except Exception as exc:  # kept as they were; refused if never read
            log.warning("cannot read %s/%s (the metrics API refuses requests until it can): "
                        "%s", CONFIGMAP_NAMESPACE, CONFIGMAP_NAME, exc)  # fmt: skip
            return self.proxy is not None
        if proxy is None:
            log.warning("%s/%s has no requestheader-client-ca-file: the API server runs "
                        "without the aggregation layer, and the metrics API refuses every "
                        "request", CONFIGMAP_NAMESPACE, CONFIGMAP_NAME)  # fmt: skip
        elif proxy.client_ca not in self._trusted:
            self._trusted.add(proxy.client_ca)
            for context in self._contexts:
                context.load_verify_locations(cadata=proxy.client_ca)
        if proxy != self.proxy:
            self._decisions.clear()
        self.proxy = proxy
        return proxy is not None

    async def _refresh(self) -> None:
        delay = REFRESH_S if self.proxy is not None else RETRY_S
        while True:
            await asyncio.sleep(delay)
            delay = REFRESH_S if await self.load() else RETRY_S

    async def start(self) -> None:
        """Read the settings, then keep them current."""
        await self.load()
        self._task = asyncio.create_task(self._refresh(), name="metrics-auth")

    async def stop(self) -> None:
        """End the refresh loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def allowed(self, user: User, access: Access) -> bool:
        """The SubjectAccessReview's answer, cached for ``DECISION_TTL_S``."""
        now = self.monotonic()
        hit = self._decisions.get((user, access))
        if hit is not None and now - hit[1] < DECISION_TTL_S:
            return hit[0]
        try:
            verdict = await self.review(user, access)
        except Exception as exc:  # no answer is no
            log.warning("SubjectAccessReview for %s failed: %s", user.name, exc)
            return False
        if len(self._decisions) >= DECISION_CACHE_MAX:
            self._decisions.clear()
        self._decisions[(user, access)] = (verdict, now)
        return verdict

    async def check(self, request: web.Request) -> web.Response | None:
        """None when ``request`` may be served; else the Status answer (401 or 403)."""
        if request.path in OPEN_PATHS or (
            request.method == "POST" and request.path == "/loadreports"
        ):
            return None
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        user = authenticate(self.proxy, peercert, request.headers)
        if isinstance(user, str):
            return status_response(401, "Unauthorized", user)
        access = access_for(request.path)
        if access.resource and not await self.allowed(user, access):
            message = (
                f'user "{user.name}" may not list external.metrics.k8s.io/{access.resource} '
                f'in namespace "{access.namespace}"'
            )
            return status_response(403, "Forbidden", message)
        return None


def status_response(code: int, reason: str, message: str) -> web.Response:
    """A Kubernetes Status object as the answer."""
    return web.json_response(
        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
         "message": message, "reason": reason, "code": code},
        status=code,
    )  # fmt: skip
