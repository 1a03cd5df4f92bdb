"""RFC 3339 UTC timestamps, written one way across the project.

Kubernetes writes ``metav1.Time`` to the second (``2026-01-02T03:04:05Z``) and
``metav1.MicroTime`` to the microsecond; logs and audit records use milliseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

__all__ = ["kube_time", "rfc3339", "utc_now"]

Precision = Literal["seconds", "milliseconds", "microseconds"]


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def rfc3339(moment: datetime | float | None = None, precision: Precision = "seconds") -> str:
    """``moment`` (a datetime, a Unix time, or now) as ``YYYY-MM-DDTHH:MM:SS[.fff]Z``.

    A naive datetime is taken to be UTC already, as Kubernetes times are.
    """
    if moment is None:
        when = utc_now()
    elif isinstance(moment, datetime):
        when = moment.astimezone(UTC) if moment.tzinfo is not None else moment
    else:
        when = datetime.fromtimestamp(moment, UTC)
    return when.replace(tzinfo=None).isoformat(timespec=precision) + "Z"


def kube_time(moment: datetime) -> str:
    """``moment`` as Kubernetes writes a ``metav1.Time`` (to the second)."""
    return rfc3339(moment)
