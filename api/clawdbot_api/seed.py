"""The original one-box ``clawdbot-config.yaml`` and its translation into the v1alpha1 kinds.

The seed format::

    resources: {gpu_allocation: 0.7, cpu_threads: 8}
    models: [{name: llama-7b, path: /models/llama, precision: int4}]
    routing_rules: [{max_tokens: 512, endpoint: local}, {max_tokens: 2048, endpoint: cloud}]

Rules are thresholds read in order: a prompt goes to the first rule whose ``max_tokens`` it
fits; prompts longer than every threshold go where the last rule points (the seed's "long
ones go to the cloud"). The seed has no cloud section; an optional ``cloud`` block (or the
importer's options) supplies one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clawdbot_api.errors import describe, dotted, format_validation_error
from clawdbot_api.v1alpha1 import (
    Accelerator,
    AcceleratorType,
    CloudEndpoint,
    LocalModelRef,
    Model,
    ModelDeployment,
    ModelDeploymentSpec,
    ObjectMeta,
    Precision,
    RoutingPolicy,
    RoutingPolicySpec,
    Rule,
    RuleMatch,
    Runtime,
    SecretKeyRef,
    Target,
)


class _Seed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedResources(_Seed):
    gpu_allocation: float = Field(default=0.9, gt=0, le=1)
    """Share of GPU memory for the model (ModelDeployment accelerator.memoryFraction)."""
    cpu_threads: int | None = Field(default=None, ge=1, le=256)
    """Threads for pre-processing (ModelDeployment cpuThreads)."""


class SeedModel(_Seed):
    name: str = Field(min_length=1, max_length=128)
    path: str = Field(min_length=1)
    precision: Precision = Precision.FP16
    version: str = "1"
    runtime: Runtime = Runtime.VLLM
    accelerator: AcceleratorType = AcceleratorType.NVIDIA


class SeedRule(_Seed):
    max_tokens: int = Field(ge=1)
    endpoint: Literal["local", "cloud"]


class SeedCloud(_Seed):
    base_url: str = Field(pattern=r"^https?://\S+$")
    model: str = Field(min_length=1)
    api_key_secret: str | None = None


class SeedConfig(_Seed):
    """The whole seed file."""

    resources: SeedResources = Field(default_factory=SeedResources)
    models: list[SeedModel] = Field(min_length=1)
    routing_rules: list[SeedRule] = Field(default_factory=list)
    cloud: SeedCloud | None = None

    @field_validator("routing_rules")
    @classmethod
    def _thresholds_increase(cls, rules: list[SeedRule]) -> list[SeedRule]:
        for i in range(1, len(rules)):
            if rules[i].max_tokens <= rules[i - 1].max_tokens:
                raise ValueError(
                    f"rule {i} has max_tokens {rules[i].max_tokens}, not above rule {i - 1}'s "
                    f"{rules[i - 1].max_tokens}: it could never match; order rules by max_tokens"
                )
        return rules


class SeedConfigError(ValueError):
    """A seed file that cannot be read or translated; the message names file, line and field."""


@dataclass(frozen=True)
class ImportOptions:
    """Choices the seed file leaves open."""

    namespace: str = "default"
    policy_name: str = "default"
    models_pvc: str | None = None
    """Map the seed's local paths onto this PersistentVolumeClaim instead of file://."""
    cloud_base_url: str = "https://api.openai.com/v1"
    cloud_model: str = "gpt-4o-mini"
    cloud_secret: str = "clawdbot-cloud"


def load(path: Path) -> SeedConfig:
    """Parse and validate a seed file, raising SeedConfigError naming the line and field."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SeedConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse(text, str(path))


def parse(text: str, source: str = "<config>") -> SeedConfig:
    """Parse seed YAML text; errors say ``source:line: field: problem``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SeedConfigError(f"{source}{line}: not valid YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise SeedConfigError(f"{source}: expected a mapping with models and routing_rules")
    try:
        return SeedConfig.model_validate(data)
    except ValidationError as exc:
        raise SeedConfigError(format_validation_error(exc, source, root)) from exc


def dns_name(name: str) -> str:
    """A model name made into a Kubernetes object name (``Llama 2 7B`` -> ``llama-2-7b``)."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return re.sub(r"-{2,}", "-", out)[:63].rstrip("-")


def translate(seed: SeedConfig, opts: ImportOptions) -> list[ModelDeployment | RoutingPolicy]:
    """The ModelDeployments and the RoutingPolicy equivalent to a seed file."""
    deployments: list[ModelDeployment] = []
    for i, m in enumerate(seed.models):
        name = dns_name(m.name)
        if not name:
            raise SeedConfigError(f"models[{i}].name: {m.name!r} has no letters or digits")
        uri = f"pvc://{opts.models_pvc}/{m.path.lstrip('/')}" if opts.models_pvc else None
        is_cpu = m.accelerator == AcceleratorType.CPU
        try:
            spec = ModelDeploymentSpec(
                model=Model(name=m.name, uri=uri or f"file://{m.path}", version=m.version),
                runtime=m.runtime,
                precision=m.precision,
                accelerator=Accelerator(
                    type=m.accelerator,
                    memory_fraction=seed.resources.gpu_allocation,
                    count=None if is_cpu else 1,
                ),
                cpu_threads=seed.resources.cpu_threads,
            )
        except ValidationError as exc:
            raise SeedConfigError(f"models[{i}] ({m.name}): {_first_error(exc)}") from exc
        meta = ObjectMeta(name=name, namespace=opts.namespace)
        deployments.append(ModelDeployment(metadata=meta, spec=spec))

    rules = [
        Rule(
            name=f"max-tokens-{r.max_tokens}-{r.endpoint}",
            match=RuleMatch(max_tokens=r.max_tokens),
            target=Target(r.endpoint),
        )
        for r in seed.routing_rules
    ]
    default = rules[-1].target if rules else Target.LOCAL
    needs_cloud = default == Target.CLOUD or any(r.target == Target.CLOUD for r in rules)
    cloud = None
    if seed.cloud or needs_cloud:
        c = seed.cloud or SeedCloud(base_url=opts.cloud_base_url, model=opts.cloud_model)
        secret = c.api_key_secret or opts.cloud_secret
        cloud = CloudEndpoint(
            base_url=c.base_url, model=c.model, api_key_secret_ref=SecretKeyRef(name=secret)
        )
    policy = RoutingPolicy(
        metadata=ObjectMeta(name=opts.policy_name, namespace=opts.namespace),
        spec=RoutingPolicySpec(
            local_models=[LocalModelRef(name=d.metadata.name or "") for d in deployments],
            cloud=cloud,
            rules=rules,
            default_target=default,
        ),
    )
    return [*deployments, policy]


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{dotted(tuple(err['loc'])) or 'spec'}: {describe(err)}"


def to_yaml(objects: list[ModelDeployment | RoutingPolicy]) -> str:
    """Manifests as one multi-document YAML stream, ready for ``kubectl apply -f -``."""
    docs = []
    for obj in objects:
        # Only what the translation set: the API server fills in every default anyway.
        body = obj.model_dump(by_alias=True, exclude_none=True, exclude_unset=True, mode="json")
        manifest = {"apiVersion": obj.api_version, "kind": obj.kind, **body}
        docs.append(yaml.safe_dump(manifest, sort_keys=False))
    return "---\n" + "---\n".join(docs)
