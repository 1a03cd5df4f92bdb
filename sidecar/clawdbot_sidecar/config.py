"""The sidecar's configuration: a RoutingPolicy spec, local endpoints and its own limits.

In a pod, the operator's discovery stream supplies the policy and endpoints; standalone and
in tests, a YAML file does. Either way the result is one :class:`SidecarConfig`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from clawdbot_api import seed
from clawdbot_api.errors import format_validation_error
from clawdbot_api.v1alpha1 import RoutingPolicy, RoutingPolicySpec


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class LocalEndpoint(_Model):
    """One model server replica that answers OpenAI-compatible requests."""

    url: str = Field(pattern=r"^https?://[^\s]+$")
    """Base URL of its OpenAI API, e.g. http://10.1.2.3:8080/v1."""
    model: str
    """The model name it serves (what is sent as "model")."""
    revision: str = ""
    """The ModelDeployment revision of the replica, for per-revision load reports."""
    deployment: str = ""
    """The ModelDeployment it belongs to."""


class Limits(_Model):
    """Protection of the sidecar and the app: bounded bodies, bounded concurrency."""

    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted (413 above it); 4 MiB fits ~1M tokens of text."""
    max_concurrency: int = 256
    """Requests in progress at once; above it the sidecar answers 429 (backpressure)."""
    local_connect_timeout_s: float = 1.0
    """A local endpoint that does not accept a connection within this counts as unreachable:
    the request goes to another endpoint (pod IPs on the cluster network connect in
    milliseconds; a second covers a lost SYN's first retransmission)."""
    cloud_connect_timeout_s: float = 5.0
    """The cloud endpoint's name lookup, TCP and TLS handshakes within this, or the attempt
    fails as unreachable and is retried (leaves room for a slow lookup and two lost SYNs)."""
    local_timeout_s: float = 300.0
    """Whole-request limit for a local model (long generations)."""
    drain_timeout_s: float = 20.0
    """On SIGTERM, how long requests in progress may take to finish."""


class SidecarConfig(_Model):
    """Everything the routing core needs."""

    policy: RoutingPolicySpec = Field(default_factory=RoutingPolicySpec)
    """The routing policy in force."""
    policy_name: str = ""
    """Name of the RoutingPolicy (from the discovery stream); it scopes shared cache keys."""
    endpoints: tuple[LocalEndpoint, ...] = ()
    """Ready local model endpoints."""
    cloud_api_key: str | None = Field(default=None, repr=False, exclude=True)
    """API key of the cloud endpoint; never logged or dumped."""
    cache_redis_password: str | None = Field(default=None, repr=False, exclude=True)
    """Password of the Redis cache (the policy's cache.redisPasswordSecretRef, from the
    discovery stream); never logged or dumped."""
    semantic_examples: str | None = Field(default=None, repr=False)
    """The semantic router's labelled examples (JSON lines; the policy's
    quality.semantic.examplesConfigMapRef, from the discovery stream, or given in a config
    file)."""
    audit_hmac_key: bytes | None = Field(default=None, repr=False, exclude=True)
    """Key of the audit hash chain from the discovery stream (the policy's
    audit.hmacKeySecretRef); None: the one given at start, if any. Never logged or dumped."""
    limits: Limits = Field(default_factory=Limits)
    """Body and concurrency limits."""


# A config nests about eight levels (policy, rules, match, headers); PyYAML composes a
# document by recursion, and a few thousand levels of "[" exhaust Python's stack.
MAX_CONFIG_DEPTH = 64
# Validation errors reported for one file; past these, the count of the rest (a generated
# file can break thousands of items, and the message goes to a log).
MAX_REPORTED_ERRORS = 20


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file, line and field."""


def _check_depth(text: str, source: str) -> None:
    """Refuse YAML nested deeper than MAX_CONFIG_DEPTH before it is composed. The event
    parser keeps its own stack, so reading events never recurses."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_CONFIG_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else 0
                raise ConfigError(f"{source}:{line}: nested deeper than {MAX_CONFIG_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _load_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (for line numbers) and its value, composed once."""
    try:
        _check_depth(text, source)
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    return root, data


def _shorten(message: str) -> str:
    lines = message.split("\n")
    if len(lines) <= MAX_REPORTED_ERRORS:
        return message
    rest = len(lines) - MAX_REPORTED_ERRORS
    return "\n".join([*lines[:MAX_REPORTED_ERRORS], f"... and {rest} more errors"])


def parse_config(text: str, source: str = "<config>") -> SidecarConfig:
    """Parse a sidecar config file: {policy: RoutingPolicy or its spec, endpoints: [...]}.
    Raises ConfigError, and only that, for anything that is not a usable config."""
    root, data = _load_yaml(text, source)
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with policy and endpoints")
    policy = data.get("policy")
    prefix: tuple[Any, ...] = ()
    if isinstance(policy, dict) and policy.get("kind") == "RoutingPolicy":
        # A whole RoutingPolicy manifest is accepted as well as its spec.
        data = {**data, "policy": policy.get("spec", {})}
        prefix = ("policy", "spec")
    try:
        return SidecarConfig.model_validate(data)
    except ValidationError as exc:
        msg = format_validation_error(exc, source, root)
        if prefix:
            msg = msg.replace(": policy.", ": policy.spec.")
        raise ConfigError(_shorten(msg)) from exc


def load_config(path: Path, api_key_env: str = "CLAWDBOT_CLOUD_API_KEY") -> SidecarConfig:
    """Load a config file and the cloud API key (from env, or the file the policy names)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    config = parse_config(text, str(path))
    return config.model_copy(update={"cloud_api_key": _api_key(api_key_env)})


def _api_key(env: str) -> str | None:
    """The cloud API key from ``env``, or from the file ``<env>_FILE`` names (a Secret)."""
    key = os.environ.get(env)
    key_file = os.environ.get(f"{env}_FILE")
    if key is None and key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{env}_FILE={key_file}: cannot read: {exc.strerror}") from exc
    return key


def config_from_seed(
    path: Path,
    local_urls: list[str],
    *,
    cloud_url: str | None = None,
    cloud_model: str | None = None,
    local_model: str | None = None,
    api_key_env: str = "CLAWDBOT_CLOUD_API_KEY",
) -> SidecarConfig:
    """A config from the seed's ``clawdbot-config.yaml``, for running outside Kubernetes.

    The seed's routing rules become the policy (as ``clawdbot import-config`` translates
    them); ``local_urls`` are the model servers of its first model.
    """
    opts = seed.ImportOptions()
    opts = dataclasses.replace(
        opts,
        cloud_base_url=cloud_url or opts.cloud_base_url,
        cloud_model=cloud_model or opts.cloud_model,
    )
    try:
        objects = seed.translate(seed.load(path), opts)
    except seed.SeedConfigError as exc:
        raise ConfigError(str(exc)) from exc
    policies = [o for o in objects if isinstance(o, RoutingPolicy)]
    models = [o for o in objects if not isinstance(o, RoutingPolicy)]
    # The name the local server knows the model by: the seed's, unless told otherwise.
    model_name = local_model or (models[0].spec.model.name if models else "default")
    endpoints = tuple(LocalEndpoint(url=u, model=model_name) for u in local_urls)
    config = SidecarConfig(policy=policies[0].spec, endpoints=endpoints)
    return config.model_copy(update={"cloud_api_key": _api_key(api_key_env)})
