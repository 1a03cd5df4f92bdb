"""Redaction of sensitive values from cloud-bound requests, and their restoration.

Typical use in the routing core::

    redactor = Redactor(RedactionConfig.from_api(spec.redaction))  # once per policy
    redactor.contains_pii(text, rule.match.pii_entities)           # routing rules
    result = redactor.redact_request(body)                          # per cloud request
    if result.is_blocked: ...                                       # stay local or refuse
    restorer = Restorer(result.mapping)
    answer = restorer.restore_response(cloud_answer)    # or restorer.chunks().feed(chunk)

Nothing here logs; values live only in the request copies and in a `PseudonymMap`, whose
repr shows a count.
"""

from .config import BUILTIN_ENTITIES, CustomEntity, Entity, RedactionConfig, RedactionMode
from .detectors import Span
from .engine import (
    PLACEHOLDER_RE,
    Findings,
    FindingsMemo,
    PseudonymMap,
    RedactionResult,
    Redactor,
    TextRedaction,
    contains_pii,
    iter_request_texts,
    map_request_texts,
)
from .restore import ChunkRestorer, Restorer, StreamRestorer
from .validators import cn_resident_id_valid, iban_valid, luhn_valid, us_ssn_valid

__all__ = [
    "BUILTIN_ENTITIES",
    "PLACEHOLDER_RE",
    "ChunkRestorer",
    "CustomEntity",
    "Entity",
    "Findings",
    "FindingsMemo",
    "PseudonymMap",
    "RedactionConfig",
    "RedactionMode",
    "RedactionResult",
    "Redactor",
    "Restorer",
    "Span",
    "StreamRestorer",
    "TextRedaction",
    "cn_resident_id_valid",
    "contains_pii",
    "iban_valid",
    "iter_request_texts",
    "luhn_valid",
    "map_request_texts",
    "us_ssn_valid",
]
