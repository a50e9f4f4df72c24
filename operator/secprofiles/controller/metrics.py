"""Prometheus metrics of the operator."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("secprofiles_reconciles_total", "Profile reconciliations", ["kind"])
ERRORS = Counter("secprofiles_reconcile_errors_total", "Profile reconciliations that failed", ["kind"])
PROFILES = Gauge("secprofiles_profiles", "Profiles by phase", ["kind", "phase"])
CHANGE_TO_INSTALLED = Histogram(
    "secprofiles_change_to_installed_seconds", "From a new profile version to Installed on every node", ["kind"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300))

_phases: dict[str, tuple[str, str]] = {}


def observe_phase(key: str, kind: str, phase: str) -> None:
    """Record the phase of one profile (the gauge counts profiles per kind and phase)."""
    before = _phases.get(key)
    if before == (kind, phase):
        return
    if before:
        PROFILES.labels(*before).dec()
    _phases[key] = (kind, phase)
    PROFILES.labels(kind, phase).inc()


def forget(key: str) -> None:
    """The profile is gone."""
    before = _phases.pop(key, None)
    if before:
        PROFILES.labels(*before).dec()
