"""RoutingPolicy: how the sidecar in matching pods splits requests between local and cloud."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from clawdbot_api.v1alpha1.common import (
    ApiModel,
    CelRule,
    CelValidated,
    ConditionList,
    LabelSelector,
    Name,
    ObjectMeta,
    SecretKeyRef,
    cel_rules,
)


class Target(StrEnum):
    """Where a rule sends a request."""

    LOCAL = "local"
    CLOUD = "cloud"
    ADAPTIVE = "adaptive"
    CASCADE = "cascade"
    """Answer locally; ask the cloud instead when the local answer's confidence is under
    quality.cascade.threshold."""
    REJECT = "reject"


class Entity(StrEnum):
    """Kinds of sensitive data the redactor recognises (docs/routing.md says what each
    one counts and what it deliberately leaves alone)."""

    EMAIL = "EMAIL"
    PHONE = "PHONE"
    CREDIT_CARD = "CREDIT_CARD"
    IBAN = "IBAN"
    IP_ADDRESS = "IP_ADDRESS"
    US_SSN = "US_SSN"
    CN_RESIDENT_ID = "CN_RESIDENT_ID"
    API_KEY = "API_KEY"
    PERSON = "PERSON"
    ADDRESS = "ADDRESS"
    DATE_OF_BIRTH = "DATE_OF_BIRTH"
    MEDICAL_RECORD_NUMBER = "MEDICAL_RECORD_NUMBER"
    HEALTH_PLAN_ID = "HEALTH_PLAN_ID"
    PASSPORT = "PASSPORT"
    DRIVERS_LICENSE = "DRIVERS_LICENSE"


class LocalModelRef(ApiModel):
    """A ModelDeployment in the policy's namespace that serves local requests."""

    name: Name
    """Name of the ModelDeployment."""
    weight: int = Field(default=100, ge=0, le=1000)
    """Relative share of local traffic when several models serve the same model name."""


class Pricing(ApiModel):
    """Price of the cloud model, for budgets and the router's cost term."""

    input_per_million_tokens: float = Field(default=0, ge=0)
    """USD per million prompt tokens."""
    output_per_million_tokens: float = Field(default=0, ge=0)
    """USD per million completion tokens."""


class CloudApi(StrEnum):
    """The protocol a cloud endpoint speaks (docs/api.md says what each one is sent)."""

    OPENAI = "openai"
    """OpenAI's chat completions, completions and embeddings; Responses and Messages
    requests are sent to it translated into chat completions."""
    OPENAI_RESPONSES = "openai-responses"
    """As openai, and Responses requests are sent as they are, to <baseURL>/responses."""
    ANTHROPIC_MESSAGES = "anthropic-messages"
    """Anthropic's Messages API only: Messages requests are sent as they are, to
    <baseURL>/messages with the key as x-api-key; no other request goes to it."""


@cel_rules(
    CelRule(
        # has() guards: the rule is also checked against objects that leave the field out.
        rule=(
            "!has(self.api) || self.api != 'anthropic-messages' || "
            "(!has(self.embeddingModel) && !has(self.audioModel))"
        ),
        message="an anthropic-messages endpoint serves neither embeddings nor audio: "
        "leave embeddingModel and audioModel unset",
        field_path=".api",
        check=lambda c: (
            c.api != CloudApi.ANTHROPIC_MESSAGES
            or (c.embedding_model is None and c.audio_model is None)
        ),
    )
)
class CloudEndpoint(CelValidated):
    """A model API outside the cluster (OpenAI-compatible, or Anthropic's Messages API)."""

    base_url: str = Field(alias="baseURL", max_length=2048, pattern=r"^https?://[^\s]+$")
    """Base URL of the API, e.g. https://api.openai.com/v1 or https://api.anthropic.com/v1."""
    api: CloudApi = CloudApi.OPENAI
    """What the endpoint speaks: openai, openai-responses (Responses requests passed through
    natively) or anthropic-messages (Messages requests passed through natively, nothing else
    sent). Every native request is redacted like a chat request."""
    model: str = Field(min_length=1, max_length=256)
    """Model name sent to the endpoint for chat and completions."""
    embedding_model: str | None = Field(default=None, min_length=1, max_length=256)
    """Model name sent to the endpoint for embeddings. Unset: embeddings never go to the
    cloud (a vector from another model is not comparable with the local model's)."""
    audio_model: str | None = Field(default=None, min_length=1, max_length=256)
    """Model name sent to the endpoint for audio transcriptions and translations (e.g.
    whisper-1). Unset: audio never goes to the cloud. Audio can't be redacted: while
    redaction is enabled it leaves only with redaction.uninspectable: allow."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret holding the API key; sent as a bearer token. Unset for endpoints without auth."""
    timeout_seconds: float = Field(default=60, gt=0, le=600)
    """Timeout of one attempt, first byte to last (capped by what is left of the deadline)."""
    max_retries: int = Field(default=2, ge=0, le=10)
    """Retries on connection errors, timeouts, 429 and 5xx, with backoff (longer when the
    endpoint sends Retry-After), as long as the deadline leaves time for them."""
    deadline_seconds: float | None = Field(default=None, gt=0, le=3600)
    """Limit of one cloud call, every attempt and the waits between them included. Unset:
    timeoutSeconds, so retries only use what quick failures left of it."""
    pricing: Pricing = Field(default_factory=Pricing)
    """Token prices, for budgets and cost-aware routing."""


class LocalSpeech(ApiModel):
    """A speech-to-text server in the cluster, for audio transcriptions and translations."""

    base_url: str = Field(alias="baseURL", max_length=2048, pattern=r"^https?://[^\s]+$")
    """Base URL of an OpenAI-compatible API serving /audio/transcriptions (and
    /audio/translations), e.g. http://whisper.speech.svc:8000/v1."""
    model: str | None = Field(default=None, min_length=1, max_length=256)
    """Model name sent to it; unset: the app's."""


class ResponsesStore(ApiModel):
    """Answered Responses kept in the sidecar's memory, so previous_response_id works."""

    enabled: bool = False
    """Keep each answered response (its input and output items) in the pod, for a later
    request's previous_response_id. Off: such a request is refused with 400."""
    max_entries: int = Field(default=1000, ge=1, le=100000)
    """Responses kept per pod; the least recently used go first."""
    ttl_seconds: int = Field(default=3600, ge=1, le=604800)
    """How long a stored response can be continued."""


class HeaderMatch(ApiModel):
    """A request header that must be present, optionally with a value."""

    name: str = Field(min_length=1, max_length=256)
    """Header name (case-insensitive)."""
    value: str | None = Field(default=None, max_length=1024)
    """Exact value; unset matches any value."""


class RuleMatch(ApiModel):
    """Conditions a request must all meet for a rule to apply. Empty matches everything."""

    max_tokens: int | None = Field(default=None, ge=0)
    """Estimated prompt tokens at most this (the seed's max_tokens)."""
    min_tokens: int | None = Field(default=None, ge=0)
    """Estimated prompt tokens at least this."""
    contains_pii: bool | None = Field(default=None, alias="containsPII")
    """True: the prompt holds sensitive data (of piiEntities, or any); false: it holds none."""
    pii_entities: list[Entity] = Field(default_factory=list, max_length=16)
    """Entities that count for containsPII; empty means all enabled in redaction."""
    models: list[str] = Field(default_factory=list, max_length=64)
    """Requested model names (the OpenAI "model" field)."""
    headers: list[HeaderMatch] = Field(default_factory=list, max_length=16)
    """Request headers, e.g. a tenant header."""


@cel_rules(
    CelRule(
        rule="!has(self.match.minTokens) || !has(self.match.maxTokens)"
        " || self.match.minTokens <= self.match.maxTokens",
        message="match.minTokens must not exceed match.maxTokens",
        field_path=".match.minTokens",
        check=lambda r: (
            r.match.min_tokens is None
            or r.match.max_tokens is None
            or r.match.min_tokens <= r.match.max_tokens
        ),
    )
)
class Rule(CelValidated):
    """One ordered routing rule; the first rule whose match holds decides."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Rule name, recorded as the reason of each decision it makes."""
    match: RuleMatch = Field(default_factory=RuleMatch)
    """Conditions; all must hold."""
    target: Target
    """local, cloud, adaptive (let the learned router choose), cascade (local first, the
    cloud when the local answer's confidence is low) or reject."""


class AdaptiveAlgorithm(StrEnum):
    LINUCB = "linUCB"
    THOMPSON = "thompsonSampling"
    EPSILON_GREEDY = "epsilonGreedy"


class Adaptive(ApiModel):
    """The learned router for requests the rules leave to it."""

    algorithm: AdaptiveAlgorithm = AdaptiveAlgorithm.LINUCB
    """Contextual bandit over prompt size, complexity, local load, cloud latency and price."""
    latency_target_ms: int = Field(default=2000, ge=1)
    """Latency target; answers slower than this count as a miss."""
    cost_weight: float = Field(default=1.0, ge=0)
    """How much a dollar of cloud spend weighs against a missed latency target."""
    exploration: float = Field(default=0.1, ge=0, le=1)
    """Exploration strength (alpha for LinUCB, epsilon for epsilon-greedy)."""
    quality_weight: float = Field(default=1.0, ge=0, le=100)
    """How much a bad answer (quality 0) costs in the reward against a good one (quality
    1). Quality comes from feedback (POST /v1/feedback, re-asks) and, for local answers,
    the model's token log-probabilities; an answer with no quality signal has no quality
    term. 0: the router learns from latency, failures and price only."""


class Cascade(ApiModel):
    """The cascade target: the local answer first, the cloud's when local is unsure."""

    threshold: float = Field(default=0.5, ge=0, le=1)
    """Confidence (the geometric mean of the local answer's token probabilities, 0 to 1)
    under which the cloud is asked instead. 0 never escalates; 1 always does."""
    hold_tokens: int = Field(default=16, ge=1, le=1024)
    """Streamed answers: local tokens held (not yet sent to the app) before deciding on
    the confidence of those tokens. A stream that ends sooner is decided on all of it."""


class Feedback(ApiModel):
    """How answers' quality comes back to the router."""

    window_seconds: int = Field(default=900, ge=1, le=86400)
    """How long after an answer POST /v1/feedback may score it (by x-clawdbot-request-id)."""
    max_entries: int = Field(default=10000, ge=1, le=1000000)
    """Answers remembered for feedback, per pod; the oldest are forgotten first."""
    reask_window_seconds: int = Field(default=60, ge=0, le=3600)
    """The same conversation asked again within this counts as a bad answer (score 0) for
    the earlier one. 0: re-asks are not counted."""


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the same namespace."""

    name: Name
    """Name of the ConfigMap."""
    key: str = Field(default="examples.jsonl", min_length=1, max_length=253)
    """Key inside the ConfigMap's data."""


class SemanticCache(ApiModel):
    """A cache of answers by meaning: a conversation close enough to a stored one gets its
    answer, unless their negations or numbers differ."""

    enabled: bool = False
    """Look up non-streamed chat and completions by the embedding of the whole
    conversation (after the exact cache, when that is on); store answers that may be
    cached (never ones that may hold sensitive values)."""
    min_similarity: float = Field(default=0.9, ge=0.5, le=1)
    """Cosine similarity of the two conversations' embeddings needed for a hit."""
    max_entries: int = Field(default=1000, ge=1, le=100000)
    """Answers kept per pod; the oldest are replaced first."""
    ttl_seconds: int = Field(default=300, ge=1, le=604800)
    """How long an answer may be served."""


class Semantic(ApiModel):
    """The semantic router: predicts from the prompt's embedding whether local will do."""

    enabled: bool = False
    """Embed each prompt the adaptive router decides on and use the prediction as its
    context instead of the keyword complexity score (which stays the fallback while the
    encoder can't answer)."""
    embedding_model: str = Field(default="all-minilm-l6-v2", min_length=1, max_length=256)
    """The served name of a local model (one of localModels) whose /v1/embeddings encodes
    the prompts, e.g. all-MiniLM-L6-v2 built by `make encoder`."""
    examples_config_map_ref: ConfigMapKeyRef | None = None
    """A ConfigMap key holding labelled examples, one JSON object a line:
    {"prompt": "...", "label": "local"} or "cloud" (the local model does, or doesn't, answer
    such prompts well). The operator hands them to the sidecars with the policy."""
    cache: SemanticCache = Field(default_factory=SemanticCache)
    """The semantic cache, on the same embeddings (independent of enabled)."""


class Quality(ApiModel):
    """Answer quality: feedback, confidence, the cascade and the semantic router."""

    feedback: Feedback = Field(default_factory=Feedback)
    """Explicit and implicit feedback."""
    cascade: Cascade = Field(default_factory=Cascade)
    """Settings of target: cascade."""
    semantic: Semantic = Field(default_factory=Semantic)
    """The semantic router (the adaptive router's context from prompt embeddings)."""


class Fallback(ApiModel):
    """Where a request goes when its first target fails or is overloaded."""

    local_to_cloud: bool = True
    """Send to the cloud when no local endpoint can answer (redaction still applies)."""
    cloud_to_local: bool = True
    """Answer locally when the cloud fails, times out or its budget is spent."""
    max_local_queue: int = Field(default=32, ge=1)
    """In-flight requests per local endpoint above which local counts as overloaded."""


class RedactionMode(StrEnum):
    MASK = "mask"
    PSEUDONYMIZE = "pseudonymize"
    BLOCK = "block"


class UninspectableContent(StrEnum):
    """What happens to content redaction can't inspect (images, audio, files, token ids)."""

    LOCAL = "local"
    REJECT = "reject"
    ALLOW = "allow"


class CustomEntity(ApiModel):
    """A user-defined kind of sensitive data, found by a regular expression."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Z][A-Z0-9_]*$")
    """Entity name in UPPER_SNAKE_CASE, used in placeholders and metrics."""
    pattern: str = Field(min_length=1, max_length=1024)
    """Regular expression (Python re syntax) matching the sensitive text; it must compile
    and must not match the empty string (checked by the operator and the sidecar: the API
    server's CEL can't compile Python expressions)."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str, info: ValidationInfo) -> str:
        name = info.data.get("name", "?")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"custom entity {name!r}: invalid regular expression: {exc}") from exc
        if compiled.fullmatch("") is not None:
            raise ValueError(f"custom entity {name!r}: pattern matches the empty string")
        return pattern


class RedactionModel(ApiModel):
    """A named-entity model that looks at cloud-bound text after the pattern tier."""

    enabled: bool = False
    """Run the model on every cloud-bound request; when it can't load or run, the request is
    blocked (stays local, or is refused), never sent unchecked."""
    pipeline: str = Field(
        default="en_core_web_sm", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$"
    )
    """Installed spaCy pipeline package (the `ner` extra installs en_core_web_sm 3.8)."""
    entities: list[Entity] = Field(
        default_factory=lambda: [Entity.PERSON, Entity.ADDRESS, Entity.DATE_OF_BIRTH],
        max_length=16,
    )
    """Entities the model may add; its findings of other kinds are dropped."""


def _builtin_names() -> list[str]:
    return [e.value for e in Entity]


def _cel_list(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _unknown_modes(r: Any) -> list[str]:
    known = {*_builtin_names(), *(c.name for c in r.custom)}
    return [name for name in r.per_entity_mode if name not in known]


@cel_rules(
    CelRule(
        # has() guards: the API server checks these rules against the bare default {} too.
        rule=f"!has(self.perEntityMode) || self.perEntityMode.all(k, k in "
        f"{_cel_list(_builtin_names())} || (has(self.custom) && "
        "self.custom.exists(c, c.name == k)))",
        message="perEntityMode keys must be built-in entities or custom entities defined in custom",
        field_path=".perEntityMode",
        check=lambda r: not _unknown_modes(r),
    ),
    CelRule(
        rule="!has(self.custom) || self.custom.all(c, self.custom.exists_one(o, o.name == c.name))",
        message="custom entity names must be unique",
        field_path=".custom",
        check=lambda r: len({c.name for c in r.custom}) == len(r.custom),
    ),
    CelRule(
        rule=f"!has(self.custom) || self.custom.all(c, !(c.name in {_cel_list(_builtin_names())}))",
        message="custom entity names must not be those of built-in entities",
        field_path=".custom",
        check=lambda r: not {c.name for c in r.custom} & set(_builtin_names()),
    ),
)
class Redaction(ApiModel):
    """What is removed from requests before they leave for the cloud.

    The API server rejects unknown entities, duplicate or built-in custom names and unknown
    perEntityMode keys (schema and CEL); these types also check that custom patterns compile
    under Python's re and don't match the empty string, so one definition refuses, for the
    operator, the CLI and the sidecar alike, what the sidecar could not apply.
    """

    enabled: bool = True
    """Redact cloud-bound requests; the local path always sees the original text."""
    entities: list[Entity] = Field(default_factory=lambda: list(Entity), max_length=16)
    """Built-in entities to detect."""
    mode: RedactionMode = RedactionMode.PSEUDONYMIZE
    """mask (replace, not restorable), pseudonymize (placeholders restored in the answer) or
    block (the request stays local, or is refused if local can't answer)."""
    per_entity_mode: dict[str, RedactionMode] = Field(default_factory=dict, max_length=64)
    """Mode overrides per entity name (a built-in entity or one defined in custom)."""
    custom: list[CustomEntity] = Field(default_factory=list, max_length=32)
    """Extra entities defined by regular expressions."""
    restore_in_responses: bool = True
    """Put the original values back into pseudonymized answers, streaming included."""
    uninspectable: UninspectableContent = UninspectableContent.LOCAL
    """Requests holding content that can't be inspected as text (image, audio and file parts,
    prompts as token ids): local (answered locally only, never sent to the cloud), reject
    (refused with 400 unless the policy answers them locally anyway) or allow (sent to the
    cloud uninspected). Applies while redaction is enabled."""
    model: RedactionModel = Field(default_factory=RedactionModel)
    """The optional model tier: a named-entity model on cloud-bound text."""

    @field_validator("custom")
    @classmethod
    def _names_are_free(cls, custom: list[CustomEntity]) -> list[CustomEntity]:
        seen: set[str] = set()
        builtins = set(_builtin_names())
        for entity in custom:
            if entity.name in builtins:
                raise ValueError(f"custom entity {entity.name!r}: clashes with a built-in entity")
            if entity.name in seen:
                raise ValueError(f"custom entity {entity.name!r}: defined more than once")
            seen.add(entity.name)
        return custom

    @model_validator(mode="after")
    def _modes_are_known(self) -> Redaction:
        unknown = _unknown_modes(self)
        if unknown:
            raise ValueError(f"perEntityMode: unknown entity {unknown[0]!r}")
        return self


class DicomOption(StrEnum):
    """An option of the Basic Application Level Confidentiality Profile (PS3.15 Annex E)."""

    RETAIN_UIDS = "retainUIDs"
    RETAIN_DEVICE_IDENTITY = "retainDeviceIdentity"
    RETAIN_INSTITUTION_IDENTITY = "retainInstitutionIdentity"
    RETAIN_PATIENT_CHARACTERISTICS = "retainPatientCharacteristics"
    RETAIN_FULL_DATES = "retainLongitudinalTemporalInformationFullDates"
    RETAIN_MODIFIED_DATES = "retainLongitudinalTemporalInformationModifiedDates"
    CLEAN_DESCRIPTORS = "cleanDescriptors"
    CLEAN_STRUCTURED_CONTENT = "cleanStructuredContent"
    CLEAN_GRAPHICS = "cleanGraphics"


class DicomPrivateTag(ApiModel):
    """A private attribute kept through de-identification: its group, its private creator
    and the element's offset in the creator's block (the low byte of the element)."""

    group: str = Field(pattern=r"^[0-9A-Fa-f]{3}[13579BbDdFf]$")
    """The odd group, four hex digits (e.g. "0019")."""
    creator: str = Field(min_length=1, max_length=64)
    """The Private Creator value that owns the block (e.g. "SIEMENS MR HEADER")."""
    element: str = Field(pattern=r"^[0-9A-Fa-f]{2}$")
    """The element's offset in the block, two hex digits (e.g. "08" for (0019,xx08))."""


class DicomRegion(ApiModel):
    """A rectangle of pixels blanked before an image leaves (burned-in text)."""

    # Not x and y: YAML 1.1 (what the API server reads manifests with) takes "y" for true.
    left: int = Field(ge=0, le=65535)
    """Left column of the rectangle (0 is the image's first column)."""
    top: int = Field(ge=0, le=65535)
    """Top row of the rectangle (0 is the image's first row)."""
    width: int = Field(ge=1, le=65535)
    """Columns blanked."""
    height: int = Field(ge=1, le=65535)
    """Rows blanked."""


class DicomWindow(ApiModel):
    """The display window used when a CT or MR image carries none."""

    center: float
    """Window center, in the modality's units (Hounsfield units for CT)."""
    width: float = Field(gt=0)
    """Window width."""


_FULL_DATES = "'retainLongitudinalTemporalInformationFullDates'"
_MODIFIED_DATES = "'retainLongitudinalTemporalInformationModifiedDates'"


@cel_rules(
    CelRule(
        rule=f"!has(self.options) || !({_FULL_DATES} in self.options && "
        f"{_MODIFIED_DATES} in self.options)",
        message="retainLongitudinalTemporalInformationFullDates and ...ModifiedDates exclude "
        "each other",
        field_path=".options",
        check=lambda d: (
            not (
                DicomOption.RETAIN_FULL_DATES in d.options
                and DicomOption.RETAIN_MODIFIED_DATES in d.options
            )
        ),
    ),
    CelRule(
        rule=f"!has(self.options) || !({_MODIFIED_DATES} in self.options) || "
        "(has(self.dateShiftDays) && self.dateShiftDays != 0)",
        message="retainLongitudinalTemporalInformationModifiedDates needs a non-zero dateShiftDays",
        field_path=".dateShiftDays",
        check=lambda d: (
            DicomOption.RETAIN_MODIFIED_DATES not in d.options or d.date_shift_days != 0
        ),
    ),
    CelRule(
        rule="!has(self.options) || self.options.all(o, self.options.exists_one(p, p == o))",
        message="options must be unique",
        field_path=".options",
        check=lambda d: len(set(d.options)) == len(d.options),
    ),
)
class Dicom(CelValidated):
    """DICOM in chat requests: de-identified locally before an image leaves for the cloud.

    A DICOM file in a request (a file part, or an image_url data URL, of application/dicom)
    is parsed in the sidecar, de-identified per DICOM PS3.15 Annex E (the Basic Application
    Level Confidentiality Profile with the options below), and sent to the cloud as a PNG of
    one frame and a text summary of the de-identified header (which goes through redaction
    like any text). The local path receives the original. docs/dicom.md has the profile's
    coverage and what is and isn't guaranteed.
    """

    enabled: bool = True
    """Convert DICOM parts for the cloud. Off: a DICOM part is content redaction can't
    inspect (redaction.uninspectable decides)."""
    profile: Literal["basic"] = "basic"
    """The confidentiality profile: basic (PS3.15 Annex E, Basic Application Level)."""
    options: list[DicomOption] = Field(default_factory=list, max_length=9)
    """Profile options on (PS3.15 Table E.1-1's columns)."""
    date_shift_days: int = Field(default=0, ge=-36500, le=36500)
    """Days every date moves by under retainLongitudinalTemporalInformationModifiedDates
    (the same offset for every study under the policy, so intervals are kept)."""
    keep_private_tags: list[DicomPrivateTag] = Field(default_factory=list, max_length=64)
    """Private attributes kept (every other private attribute is removed)."""
    blank_regions: list[DicomRegion] = Field(default_factory=list, max_length=32)
    """Pixel regions blanked in every image that leaves. When set, an image whose pixels
    may carry burned-in text (BurnedInAnnotation YES, or absent for a modality that often
    burns text in) leaves with these regions blanked; unset, such an image stays local (or
    is refused, as redaction.uninspectable says)."""
    frame: int = Field(default=0, ge=0, le=65535)
    """The frame of a multi-frame image converted (0: the first)."""
    ct_window: DicomWindow | None = None
    """Window for CT images without one; unset: soft tissue, center 40 HU, width 400."""
    mr_window: DicomWindow | None = None
    """Window for MR images without one; unset: the image's own range."""
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    """Largest DICOM file converted; a larger one stays local (or is refused)."""


class CacheBackend(StrEnum):
    MEMORY = "memory"
    REDIS = "redis"


@cel_rules(
    CelRule(
        # has() guards: the API server checks this rule against the bare default {} too.
        rule="!has(self.backend) || self.backend != 'redis' || has(self.redisURL)",
        message="redisURL is required when backend is redis",
        field_path=".redisURL",
        check=lambda c: c.backend != CacheBackend.REDIS or c.redis_url is not None,
    )
)
class Cache(CelValidated):
    """Exact-match response cache."""

    enabled: bool = False
    """Answer repeated identical requests from the cache."""
    backend: CacheBackend = CacheBackend.MEMORY
    """memory (per pod, LRU) or redis (shared)."""
    redis_url: str | None = Field(
        default=None, alias="redisURL", max_length=2048, pattern=r"^rediss?://[^\s]+$"
    )
    """redis:// or rediss:// URL of the shared cache. Put no password in it (anyone who can
    read the policy could read it): name a Secret in redisPasswordSecretRef."""
    redis_password_secret_ref: SecretKeyRef | None = None
    """Secret holding the Redis password, handed to the sidecars over the discovery stream
    like the cloud API key. Unset for a Redis without a password."""
    ttl_seconds: int = Field(default=300, ge=1, le=604800)
    """How long an answer stays cached."""
    max_entries: int = Field(default=10000, ge=1)
    """Entries kept by the memory backend."""
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    """Bytes of answers kept by the memory backend (least recently used evicted first): the
    sidecar's memory for the cache, whatever the size of the answers (default 64 MiB)."""
    cache_restored_pii: bool = False
    """Cache answers into which redacted values were restored (off: they may hold PII)."""


class Budgets(ApiModel):
    """Limits on cloud use; when one is reached, traffic shifts to local."""

    cloud_tokens_per_minute: int | None = Field(default=None, ge=1)
    """Prompt plus completion tokens sent to the cloud per minute, per pod."""
    cloud_requests_per_minute: int | None = Field(default=None, ge=1)
    """Cloud requests per minute, per pod."""
    cloud_usd_per_day: float | None = Field(default=None, gt=0, alias="cloudUSDPerDay")
    """Cloud spend per day, per pod, from the endpoint's pricing."""


class Audit(ApiModel):
    """The tamper-evident log of routing decisions (never the sensitive values)."""

    enabled: bool = True
    """Write an audit record for every request."""
    sink: Literal["stdout", "file"] = "stdout"
    """stdout (collected with the pod's logs) or file."""
    path: str | None = Field(default=None, max_length=1024)
    """File path when sink is file."""
    hmac_key_secret_ref: SecretKeyRef | None = None
    """Secret with a key that makes the hash chain unforgeable without it."""


@cel_rules(
    CelRule(
        rule="has(self.cloud) || self.rules.all(r, r.target != 'cloud')",
        message="a rule targets cloud but no cloud endpoint is configured",
        field_path=".rules",
        check=lambda s: s.cloud is not None or all(r.target != Target.CLOUD for r in s.rules),
    ),
    CelRule(
        rule="size(self.localModels) > 0 || self.rules.all(r, r.target != 'local')",
        message="a rule targets local but localModels is empty",
        field_path=".localModels",
        check=lambda s: bool(s.local_models) or all(r.target != Target.LOCAL for r in s.rules),
    ),
    CelRule(
        rule="(has(self.cloud) && size(self.localModels) > 0) || "
        "((!has(self.defaultTarget) || self.defaultTarget != 'cascade') && "
        "self.rules.all(r, r.target != 'cascade'))",
        message="target cascade needs both localModels and a cloud endpoint",
        field_path=".rules",
        check=lambda s: (
            (s.cloud is not None and bool(s.local_models))
            or (
                s.default_target != Target.CASCADE
                and all(r.target != Target.CASCADE for r in s.rules)
            )
        ),
    ),
    CelRule(
        rule="self.rules.all(r, self.rules.exists_one(o, o.name == r.name))",
        message="rule names must be unique",
        field_path=".rules",
        check=lambda s: len({r.name for r in s.rules}) == len(s.rules),
    ),
)
class RoutingPolicySpec(CelValidated):
    """The desired routing of requests from the selected pods."""

    pod_selector: LabelSelector = Field(default_factory=LabelSelector)
    """Pods in this namespace the policy applies to (a pod may also name it by annotation)."""
    local_models: list[LocalModelRef] = Field(default_factory=list, max_length=16)
    """ModelDeployments that answer local requests."""
    cloud: CloudEndpoint | None = None
    """The cloud endpoint; unset keeps every request local."""
    rules: list[Rule] = Field(default_factory=list, max_length=64)
    """Ordered rules; the first that matches decides."""
    default_target: Target = Target.ADAPTIVE
    """Target for requests no rule matches."""
    adaptive: Adaptive = Field(default_factory=Adaptive)
    """The learned router."""
    quality: Quality = Field(default_factory=Quality)
    """Answer quality: feedback, confidence and the cascade target."""
    fallback: Fallback = Field(default_factory=Fallback)
    """Failover between local and cloud."""
    redaction: Redaction = Field(default_factory=Redaction)
    """Sensitive-data removal before the cloud."""
    cache: Cache = Field(default_factory=Cache)
    """Response cache."""
    budgets: Budgets = Field(default_factory=Budgets)
    """Cloud budgets."""
    audit: Audit = Field(default_factory=Audit)
    """Audit log."""
    local_speech: LocalSpeech | None = None
    """The local speech-to-text server for /v1/audio/transcriptions and translations."""
    responses_store: ResponsesStore = Field(default_factory=ResponsesStore)
    """The in-pod store behind the Responses API's previous_response_id."""
    dicom: Dicom | None = None
    """DICOM in chat requests, de-identified before the cloud sees an image; unset: a DICOM
    part is content redaction can't inspect."""


class RoutingPolicyStatus(ApiModel):
    """The observed state of a RoutingPolicy, written by the operator."""

    observed_generation: int | None = None
    """The .metadata.generation the status reflects."""
    conditions: ConditionList
    """Ready (secret and models resolved) and Degraded."""
    matched_pods: int = 0
    """Pods whose sidecar uses this policy."""
    ready_endpoints: int = 0
    """Ready local model endpoints behind the policy."""


class RoutingPolicy(ApiModel):
    """How requests from selected pods are split between local models and a cloud endpoint."""

    api_version: Literal["clawdbot.io/v1alpha1"] = "clawdbot.io/v1alpha1"
    kind: Literal["RoutingPolicy"] = "RoutingPolicy"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: RoutingPolicySpec
    status: RoutingPolicyStatus | None = None
