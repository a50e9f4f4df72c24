"""The API client's retry rule for throttled answers (429 with Retry-After)."""
import pytest

from secprofiles.kubeapi import MAX_RETRY_AFTER, retry_after


@pytest.mark.parametrize(("status", "header", "expected"), [
    (429, "2", 2.0),
    (429, None, 1.0),
    (429, "not-a-number", 1.0),
    (429, "3600", MAX_RETRY_AFTER),
    (429, "-5", 0.0),
    (500, "2", None),
    (409, None, None),
])
def test_only_throttling_is_retried_and_the_wait_is_bounded(status: int, header: str | None,
                                                            expected: float | None) -> None:
    assert retry_after(status, header) == expected
