"""The clock, as Kubernetes states time: UTC, and RFC 3339 with second precision in object fields."""

from __future__ import annotations

import datetime as dt


def now() -> dt.datetime:
    """The current time in UTC."""
    return dt.datetime.now(dt.UTC)


def timestamp() -> str:
    """The current time as Kubernetes writes it in object fields (``metav1.Time``): ``2026-01-02T03:04:05Z``."""
    return now().strftime("%Y-%m-%dT%H:%M:%SZ")
