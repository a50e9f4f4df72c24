"""Leader election decisions (pure); the real Lease, two processes and failover: tests/integration/test_operator.py."""

from __future__ import annotations

import pytest

from secprofiles.controller.leadership import LeaseSettings, Record, Step, next_step


def record(holder: str, renew: str = "2026-12-03T07:00:00.000000Z", duration: float = 15) -> Record:
    return Record(holder, renew, duration)


@pytest.mark.parametrize(("found", "unchanged_for", "expected"), [
    (None, 0.0, Step.CREATE),
    (record("me"), 0.0, Step.RENEW),
    (record("me"), 60.0, Step.RENEW),  # ours even if we were slow: renew, nobody else could have taken it
    (record("other"), 0.0, Step.WAIT),
    (record("other"), 14.9, Step.WAIT),
    (record("other"), 15.1, Step.TAKE),  # the holder stopped renewing for longer than its lease duration
    (record(""), 0.0, Step.TAKE),  # released on a clean stop
])
def test_next_step(found: Record | None, unchanged_for: float, expected: Step) -> None:
    assert next_step(found, "me", unchanged_for) is expected


def test_expiry_follows_the_holders_own_duration() -> None:
    assert next_step(record("other", duration=3), "me", 3.5) is Step.TAKE
    assert next_step(record("other", duration=60), "me", 30) is Step.WAIT


def test_record_of_a_lease_object() -> None:
    lease = {"spec": {"holderIdentity": "pod-a", "renewTime": "2026-12-03T07:00:00.000000Z",
                      "leaseDurationSeconds": 15}}
    assert Record.of(lease) == Record("pod-a", "2026-12-03T07:00:00.000000Z", 15.0)
    assert Record.of({"spec": {}}) == Record("", "", 0.0)


def test_scaled_settings_keep_client_gos_proportions() -> None:
    settings = LeaseSettings.scaled("ns", "me", "lease", 15)
    assert (settings.duration, settings.renew_deadline, settings.retry_period) == (15, 10, 2)
