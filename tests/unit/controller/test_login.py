"""The operator's in-cluster login reaches the API server by the ``kubernetes`` Service's address, not its DNS name
(a cluster without DNS, or a DNS outage, must not stop the operator: found on the real node, issue 14)."""

from __future__ import annotations

import kopf
import pytest

from secprofiles.controller.operator import service_address


def _kopf_in_cluster() -> kopf.ConnectionInfo:
    # What kopf.login_with_service_account returns (kopf 1.45: the server is hard-coded).
    return kopf.ConnectionInfo(server="https://kubernetes.default.svc", ca_path="/ca.crt", token="t",
                               default_namespace="secprofiles-system")


@pytest.mark.parametrize(("host", "port", "server"), [
    ("10.96.0.1", "443", "https://10.96.0.1:443"),
    ("fd00::1", "6443", "https://[fd00::1]:6443"),
])
def test_service_address_replaces_the_dns_name(monkeypatch: pytest.MonkeyPatch, host: str, port: str,
                                               server: str) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    info = service_address(_kopf_in_cluster())
    assert info is not None
    assert info.server == server
    assert (info.token, info.ca_path, info.default_namespace) == ("t", "/ca.crt", "secprofiles-system")


def test_outside_a_pod_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert service_address(_kopf_in_cluster()) == _kopf_in_cluster()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert service_address(None) is None
