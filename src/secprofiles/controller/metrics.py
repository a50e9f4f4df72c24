"""Prometheus metrics of one operator, in a registry of its own.

Every metric and every piece of state behind one (which phase each profile was last counted in) belongs to an
``OperatorMetrics`` instance, so several operators in one process (tests) never count into each other; the
process and platform collectors are registered too, so ``/metrics`` serves the usual ``process_*`` figures.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)


class OperatorMetrics:
    """The operator's metrics and the state they need."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.reconciles = Counter("secprofiles_reconciles_total", "Profile reconciliations", ["kind"],
                                  registry=self.registry)
        self.errors = Counter("secprofiles_reconcile_errors_total", "Profile reconciliations that failed", ["kind"],
                              registry=self.registry)
        self.profiles = Gauge("secprofiles_profiles", "Profiles by phase", ["kind", "phase"], registry=self.registry)
        self.change_to_installed = Histogram(
            "secprofiles_change_to_installed_seconds", "From a new profile version to Installed on every node",
            ["kind"], buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300), registry=self.registry)
        self.webhook_seconds = Histogram(
            "secprofiles_webhook_handler_seconds", "Time to decide one pod admission",
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25), registry=self.registry)
        self._leader = Gauge("secprofiles_leader", "1 while this replica holds the Lease and runs the writers",
                             registry=self.registry)
        self._phases: dict[str, tuple[str, str]] = {}

    def leader_from(self, leading: Callable[[], bool]) -> None:
        """Read the leader gauge from ``leading`` whenever metrics are collected."""
        self._leader.set_function(lambda: float(leading()))

    def observe_phase(self, key: str, kind: str, phase: str) -> None:
        """Record the phase of one profile (the gauge counts profiles per kind and phase)."""
        before = self._phases.get(key)
        if before == (kind, phase):
            return
        if before:
            self.profiles.labels(*before).dec()
        self._phases[key] = (kind, phase)
        self.profiles.labels(kind, phase).inc()

    def forget(self, key: str) -> None:
        """The profile is gone."""
        before = self._phases.pop(key, None)
        if before:
            self.profiles.labels(*before).dec()

