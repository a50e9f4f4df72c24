"""The API client's retry rule for throttled answers (429 with Retry-After)."""
import pytest

from secprofiles.kube.client import MAX_RETRY_AFTER, _api_error, retry_after


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


def test_status_causes_are_kept_on_the_error() -> None:
    # The body a kube-apiserver v1.34.4 answered to an Event create in a terminating namespace.
    text = ('{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"events \\"e.\\" is '
            'forbidden: unable to create new content in namespace t because it is being terminated","reason":'
            '"Forbidden","details":{"name":"e.","kind":"events","causes":[{"reason":"NamespaceTerminating",'
            '"message":"namespace t is being terminated","field":"metadata.namespace"}]},"code":403}')
    error = _api_error(403, "Forbidden", text)
    assert error.causes == ("NamespaceTerminating",)
    assert "being terminated" in error.message
    assert _api_error(500, "Internal Server Error", "not json").message == "not json"
