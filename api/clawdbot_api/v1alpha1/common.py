"""Building blocks shared by the clawdbot.io/v1alpha1 kinds.

Every model here is the single source of truth for one part of the API: the CRD schema is
generated from it (field docstrings become descriptions), and the operator, the sidecar and
the importer parse with it. Rules that span fields are declared once with :func:`cel_rule`
and enforced in both places: as CEL in the CRD (by the API server) and in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from clawdbot_api.clock import kube_time

GROUP: Final = "clawdbot.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "clawdbot.io/v1alpha1"


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
    )

    def to_manifest(self) -> dict[str, Any]:
        """Dump as a Kubernetes manifest: camelCase keys, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True)
class CelRule:
    """A cross-field rule, as CEL for the API server and as a Python check for everyone else."""

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None
    reason: str = "FieldValueInvalid"

    def as_schema(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry for this rule."""
        out = {"rule": self.rule, "message": self.message, "reason": self.reason}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


CEL_RULES_ATTR = "__cel_rules__"
M = TypeVar("M", bound=type[BaseModel])


def cel_rules(*rules: CelRule) -> Callable[[M], M]:
    """Attach CEL rules to a model: the CRD generator emits them, validation enforces them."""

    def decorate(cls: M) -> M:
        setattr(cls, CEL_RULES_ATTR, rules)
        return cls

    return decorate


class CelValidated(ApiModel):
    """An ApiModel whose :func:`cel_rules` also run at Python validation time."""

    @model_validator(mode="after")
    def _check_cel_rules(self) -> CelValidated:
        for rule in getattr(type(self), CEL_RULES_ATTR, ()):
            if not rule.check(self):
                where = rule.field_path.lstrip(".") + ": " if rule.field_path else ""
                raise ValueError(f"{where}{rule.message}")
        return self


def _int_or_string_schema() -> dict[str, Any]:
    return {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
    }


IntOrString = Annotated[int | str, WithJsonSchema(_int_or_string_schema())]
"""A Kubernetes int-or-string (quantities, percentages)."""

Timestamp = Annotated[
    datetime,
    PlainSerializer(kube_time, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""An RFC 3339 time, serialized the way Kubernetes writes metav1.Time."""

Name = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
]
"""A DNS-1123 subdomain, the name of a Kubernetes object."""


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One observation of the object's state, in the metav1.Condition shape."""

    type: str = Field(max_length=316)
    """Kind of condition, e.g. Available, Progressing, Degraded, RolledBack."""
    status: ConditionStatus
    """True, False or Unknown."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation this condition was computed from."""
    last_transition_time: Timestamp
    """When the status last changed."""
    reason: str = Field(max_length=1024)
    """A CamelCase word for programs to match on."""
    message: str = Field(default="", max_length=32768)
    """A sentence for people: what happened and what to do."""


ConditionList = Annotated[
    list[Condition],
    Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]
"""Conditions keyed by type, so server-side apply merges them one by one."""


class LabelSelectorRequirement(ApiModel):
    """A label selector requirement, as in metav1.LabelSelectorRequirement."""

    key: str = Field(min_length=1, max_length=317)
    """The label key the selector applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: list[str] = Field(default_factory=list, max_length=64)
    """Values for In and NotIn; must be empty for Exists and DoesNotExist."""


class LabelSelector(ApiModel):
    """Selects objects by label, as in metav1.LabelSelector. Empty selects everything."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    """Labels that must all be present with these values."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)
    """Requirements that must all hold."""

    def matches(self, labels: dict[str, str]) -> bool:
        """True when ``labels`` satisfy every term of this selector."""
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace."""

    name: Name
    """Name of the Secret."""
    key: str = Field(default="api-key", min_length=1, max_length=253)
    """Key inside the Secret's data."""


class Toleration(ApiModel):
    """A toleration for tainted (typically GPU) nodes, as in core/v1 Toleration."""

    key: str | None = Field(default=None, max_length=317)
    """Taint key; empty with operator Exists tolerates everything."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists matches any value; Equal matches value."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""


class ResourceRequirements(ApiModel):
    """CPU and memory for each replica, as Kubernetes quantities. GPUs come from accelerator."""

    requests: dict[str, IntOrString] = Field(default_factory=dict)
    """Minimum resources, e.g. {cpu: "4", memory: 16Gi}."""
    limits: dict[str, IntOrString] = Field(default_factory=dict)
    """Maximum resources, e.g. {memory: 24Gi}."""


class ObjectMeta(BaseModel):
    """The part of metav1.ObjectMeta that Clawdbot reads; the rest is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None
