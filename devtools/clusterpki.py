"""The dev cluster's certificates and kubeconfigs, as kubeadm lays them out.

One cluster CA issues the API server's serving certificate and every client certificate (admin,
kube-controller-manager, kube-scheduler, the API server's towards kubelets; a real node adds its own); a separate
front-proxy CA serves the aggregation layer's request-header authentication; an ECDSA key signs service-account
tokens. Everything is written under one directory, private keys mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secprofiles.kube.pki import CertificateAuthority, key_pem

CA_LIFETIME: Final = dt.timedelta(days=10)
CERT_LIFETIME: Final = dt.timedelta(days=9)
#: Cluster IP range given to the API server; its first address is the ``kubernetes`` Service's.
SERVICE_CLUSTER_IP_RANGE: Final = "10.96.0.0/24"


def write_file(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` (parents made) with ``mode`` from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def write_pair(ca: CertificateAuthority, directory: Path, stem: str, common_name: str,
               **kwargs: Any) -> tuple[Path, Path]:
    """Issue a certificate (see ``CertificateAuthority.issue``) and write ``stem.crt``/``stem.key``."""
    cert_pem, key = ca.issue(common_name, CERT_LIFETIME, **kwargs)
    return write_file(directory / f"{stem}.crt", cert_pem), write_file(directory / f"{stem}.key", key, 0o600)


@dataclass(frozen=True)
class ClusterPki:
    """The certificate files of one dev cluster, under ``directory``."""

    directory: Path
    ca: CertificateAuthority

    @classmethod
    def create(cls, directory: Path, apiserver_hosts: Sequence[str] = ()) -> ClusterPki:
        """Make every certificate and key the control plane needs; ``apiserver_hosts`` are extra names or
        addresses the API server's certificate must carry (loopback and the Service names always are)."""
        ca = CertificateAuthority.create("secprofiles-devcluster-ca", CA_LIFETIME)
        pki = cls(directory, ca)
        write_file(pki.ca_file, ca.cert_pem)
        write_file(pki.ca_key_file, key_pem(ca.key), 0o600)
        service_ip = str(next(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE).hosts()))
        write_pair(ca, directory, "apiserver", "kube-apiserver", server=True, hosts=[
            "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local", "127.0.0.1", service_ip, *apiserver_hosts])
        pki.client("admin", "secprofiles-admin", ["system:masters"])
        # Front proxy (request-header authentication) for the aggregation layer, as kubeadm sets it up; without it
        # every delegating component logs errors about a missing requestheader CA.
        front_proxy_ca = CertificateAuthority.create("secprofiles-devcluster-front-proxy-ca", CA_LIFETIME)
        write_file(directory / "front-proxy-ca.crt", front_proxy_ca.cert_pem)
        write_pair(front_proxy_ca, directory, "front-proxy-client", "front-proxy-client", client=True)
        pki.client("controller-manager", "system:kube-controller-manager")
        pki.client("scheduler", "system:kube-scheduler")
        # The API server's identity towards kubelets (logs, exec), as kubeadm makes it.
        pki.client("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"])
        sa_key = ec.generate_private_key(ec.SECP256R1())
        write_file(directory / "sa.key", key_pem(sa_key), 0o600)
        write_file(directory / "sa.pub", sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return pki

    @property
    def ca_file(self) -> Path:
        """The cluster CA's certificate."""
        return self.directory / "ca.crt"

    @property
    def ca_key_file(self) -> Path:
        """The cluster CA's key (the controller-manager signs with it)."""
        return self.directory / "ca.key"

    def client(self, stem: str, common_name: str, organizations: Sequence[str] = ()) -> tuple[Path, Path]:
        """A client certificate (user ``common_name`` in groups ``organizations``): ``stem.crt``, ``stem.key``."""
        return write_pair(self.ca, self.directory, stem, common_name, organizations=list(organizations), client=True)

    def file(self, name: str) -> Path:
        """A file of this PKI by name, e.g. ``admin.crt``."""
        return self.directory / name


def write_kubeconfig(path: Path, server: str, ca_file: Path, user: str, credentials: Mapping[str, str]) -> Path:
    """A kubeconfig for ``server`` (trusting ``ca_file``) with ``users[].user`` = ``credentials``."""
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": dict(credentials)}],
        "contexts": [{"name": user, "context": {"cluster": "devcluster", "user": user}}],
        "current-context": user,
    }
    return write_file(path, yaml.safe_dump(config, sort_keys=False).encode(), 0o600)
