"""Self-managed webhook certificate: issued once, kept while valid, renewed before expiry, CA rotation overlap."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from secprofiles.controller.admission.certificates import BUNDLE, CA_FILE, CA_LIFETIME, CERT_FILE, CERT_LIFETIME, issue
from secprofiles.controller.admission.webhook import WebhookOptions, has_apparmor_field

HOSTS = ["secprofiles-webhook.secprofiles-system.svc", "127.0.0.1"]
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def leaf(data: dict[str, bytes]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data[CERT_FILE])


def test_issue_keep_and_renew() -> None:
    first = issue({}, HOSTS, NOW)
    cert = leaf(first)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(first[CA_FILE]))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n) for n in sans.get_values_for_type(x509.DNSName)} == {HOSTS[0]}
    assert [str(n) for n in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert issue(first, HOSTS, NOW + dt.timedelta(days=30)) is first  # still valid: nothing rewritten
    renewed = issue(first, HOSTS, NOW + CERT_LIFETIME - dt.timedelta(days=29))
    assert leaf(renewed).serial_number != cert.serial_number and renewed[CA_FILE] == first[CA_FILE]
    assert issue(first, [*HOSTS, "localhost"], NOW)[CERT_FILE] != first[CERT_FILE]  # a new name: reissued


def test_ca_rotation_keeps_old_ca_in_bundle() -> None:
    first = issue({}, HOSTS, NOW)
    later = NOW + CA_LIFETIME - CERT_LIFETIME
    rotated = issue(first, HOSTS, later)
    assert rotated[CA_FILE] != first[CA_FILE]
    assert rotated[BUNDLE] == rotated[CA_FILE] + first[CA_FILE]


def test_version_and_hosts() -> None:
    assert has_apparmor_field("v1.30.0") and has_apparmor_field("v1.34.4+k3s1")
    assert not has_apparmor_field("v1.29.9") and not has_apparmor_field("garbage")
    options = WebhookOptions(port=9443, cert_dir=Path("/tmp"), host="10.0.0.5")
    assert options.hosts()[0] == "secprofiles-webhook.secprofiles-system.svc" and options.hosts()[-1] == "10.0.0.5"
