from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from secprofiles.kube.pki import CertificateAuthority


def test_leaf_is_signed_by_the_ca_and_names_its_hosts() -> None:
    ca = CertificateAuthority.create("test-ca", dt.timedelta(days=1), path_length=0)
    cert_pem, key_pem = ca.issue("svc", dt.timedelta(hours=1), hosts=["svc.ns.svc", "127.0.0.1"], server=True)
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(ca.cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["svc.ns.svc"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert b"PRIVATE KEY" in key_pem
    assert cert.not_valid_after_utc <= ca.cert.not_valid_after_utc


def test_client_certificate_carries_its_organizations() -> None:
    ca = CertificateAuthority.create("test-ca", dt.timedelta(days=1))
    cert = x509.load_pem_x509_certificate(
        ca.issue("admin", dt.timedelta(hours=1), organizations=["system:masters"], client=True)[0])
    assert cert.subject.rfc4514_string() == "CN=admin,O=system:masters"
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
