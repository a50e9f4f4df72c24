"""The webhook's serving certificate: self-managed (CA + certificate in a Secret) or files from cert-manager.

Either source writes/reads ``tls.crt`` and ``tls.key`` in a directory that Kopf's webhook server serves from
(it re-reads the files and restarts its listener when they change), and yields the CA bundle that the operator
patches into the MutatingWebhookConfiguration's ``caBundle``. Self-managed: ECDSA P-256, a CA valid for 5 years
and a serving certificate valid for 90 days, renewed 30 days before expiry; while a new CA takes over, the
bundle holds both CAs so the API server trusts the old and the new certificate.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secprofiles.kube import clock
from secprofiles.kube.client import ApiError, KubeApi
from secprofiles.kube.pki import CertificateAuthority, key_pem
from secprofiles.resources import resource_path

log = logging.getLogger(__name__)

CERT_FILE, KEY_FILE, CA_FILE = "tls.crt", "tls.key", "ca.crt"
CA_KEY, BUNDLE = "ca.key", "ca-bundle.crt"
CA_LIFETIME = dt.timedelta(days=5 * 365)
CERT_LIFETIME = dt.timedelta(days=90)
RENEW_BEFORE = dt.timedelta(days=30)


class CertSource(Protocol):
    """Where the serving certificate comes from."""

    directory: Path

    async def refresh(self) -> bytes | None:
        """Make ``tls.crt``/``tls.key`` in ``directory`` current; return the CA bundle (PEM), if known."""


@dataclass
class FileSource:
    """Files mounted from a cert-manager Secret (``tls.crt``, ``tls.key``, ``ca.crt``): read, never written."""

    directory: Path

    async def refresh(self) -> bytes | None:
        """The mounted ``ca.crt``, if any (cert-manager's CA injector may own ``caBundle`` instead)."""
        ca = self.directory / CA_FILE
        return await asyncio.to_thread(ca.read_bytes) if ca.exists() else None


@dataclass
class SelfManaged:
    """A CA and a serving certificate kept in a Secret of the operator's namespace, renewed before expiry."""

    api: KubeApi
    namespace: str
    secret_name: str
    directory: Path
    hosts: Sequence[str]

    async def refresh(self) -> bytes | None:
        """Load the Secret, (re)issue what is missing, expiring or lacks a host, store it, write the files."""
        path = resource_path("Secret", self.namespace, self.secret_name)
        for _ in range(3):  # another replica may write the Secret at the same time: re-read on conflict
            secret = await self.api.get(path)
            data = {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}
            fresh = issue(data, self.hosts, clock.now())
            try:
                if secret is None:
                    await self.api.create(resource_path("Secret", self.namespace), _secret(self.secret_name, fresh))
                elif fresh != data:
                    body = _secret(self.secret_name, fresh)
                    body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
                    await self.api.request("PUT", path, body)
            except ApiError as error:
                if error.status == 409:
                    continue
                raise
            if fresh != data:
                log.info("webhook certificate issued for %s, valid until %s", ", ".join(self.hosts),
                         x509.load_pem_x509_certificate(fresh[CERT_FILE]).not_valid_after_utc.isoformat())
            await asyncio.to_thread(_write_files, self.directory, fresh)
            return fresh[BUNDLE]
        raise RuntimeError(f"Secret {self.namespace}/{self.secret_name} keeps changing under the operator")


def issue(data: dict[str, bytes], hosts: Sequence[str], now: dt.datetime) -> dict[str, bytes]:
    """Secret data that is valid for ``hosts`` at ``now`` for at least RENEW_BEFORE: ``data`` itself if it is."""
    ca = _load_ca(data)
    if ca is None or ca.cert.not_valid_after_utc - now < CERT_LIFETIME + RENEW_BEFORE:
        old = [ca.cert] if ca is not None and ca.cert.not_valid_after_utc > now else []
        ca = CertificateAuthority.create(f"secprofiles-webhook-ca-{int(now.timestamp())}", CA_LIFETIME, now,
                                         path_length=0)
        bundle = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [ca.cert, *old])
    else:
        bundle = data.get(BUNDLE) or ca.cert_pem
    if ca.cert_pem == data.get(CA_FILE) and bundle == data.get(BUNDLE) and _leaf_ok(data, ca.cert, hosts, now):
        return data
    cert_pem, leaf_key_pem = ca.issue(hosts[0], CERT_LIFETIME, at=now, hosts=hosts, server=True)
    return {CA_FILE: ca.cert_pem, CA_KEY: key_pem(ca.key), BUNDLE: bundle, CERT_FILE: cert_pem,
            KEY_FILE: leaf_key_pem}


async def inject_ca_bundle(api: KubeApi, config_name: str, bundle: bytes) -> bool:
    """Set ``caBundle`` of every webhook in the MutatingWebhookConfiguration ``config_name``; True if changed.

    A JSON patch guarded by a ``test`` of each webhook's name, so a concurrent edit of the list fails (409/422)
    instead of writing the bundle into the wrong webhook.
    """
    path = resource_path("MutatingWebhookConfiguration", name=config_name)
    config = await api.get(path)
    if config is None:
        log.warning("MutatingWebhookConfiguration %s not found: caBundle not injected", config_name)
        return False
    encoded = base64.b64encode(bundle).decode()
    ops: list[dict[str, object]] = []
    for index, webhook in enumerate(config.get("webhooks") or []):
        if (webhook.get("clientConfig") or {}).get("caBundle") != encoded:
            ops += [{"op": "test", "path": f"/webhooks/{index}/name", "value": webhook["name"]},
                    {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded}]
    if ops:
        await api.patch(path, ops, "json")
        log.info("caBundle injected into MutatingWebhookConfiguration %s", config_name)
    return bool(ops)


def _load_ca(data: dict[str, bytes]) -> CertificateAuthority | None:
    try:
        cert = x509.load_pem_x509_certificate(data[CA_FILE])
        key = serialization.load_pem_private_key(data[CA_KEY], None)
    except (KeyError, ValueError):
        return None
    return CertificateAuthority(cert, key) if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _leaf_ok(data: dict[str, bytes], ca: x509.Certificate, hosts: Sequence[str], now: dt.datetime) -> bool:
    """The stored serving certificate is signed by ``ca``, names every host, and is not due for renewal."""
    try:
        cert = x509.load_pem_x509_certificate(data[CERT_FILE])
        serialization.load_pem_private_key(data[KEY_FILE], None)
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (KeyError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    present = {str(n) for n in names.get_values_for_type(x509.DNSName)}
    present |= {str(n) for n in names.get_values_for_type(x509.IPAddress)}
    return set(hosts) <= present and cert.not_valid_after_utc - now > RENEW_BEFORE


def _secret(name: str, data: dict[str, bytes]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "secprofiles"}},
            "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())}}


def _write_files(directory: Path, data: dict[str, bytes]) -> None:
    """Write the serving pair (and CA) atomically: the webhook server may re-read them at any moment."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, mode in ((KEY_FILE, 0o600), (CERT_FILE, 0o644), (CA_FILE, 0o644)):
        target = directory / name
        if target.exists() and target.read_bytes() == data[name]:
            continue
        temp = directory / f".tmp-{name}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data[name])
        temp.replace(target)
