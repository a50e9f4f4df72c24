"""Helpers for tests that run against a :class:`~secprofiles.devcluster.DevCluster`.

* :func:`service_account_kubeconfig` - a kubeconfig (bearer token from the
  TokenRequest API) for a service account, to prove RBAC rules;
* :func:`webhook_tls` and :func:`webhook_configuration` - TLS material for an
  admission webhook served on 127.0.0.1 and the matching
  Mutating/ValidatingWebhookConfiguration body (``clientConfig.url`` + ``caBundle``);
* :func:`create_node` - Node objects for simulated nodes, with status Ready.

Everything here talks to the API server through :meth:`DevCluster.api` (plain
HTTPS with the admin certificate), so it needs no Kubernetes client library;
:func:`api_client` turns any kubeconfig into an official ``kubernetes`` client.
"""

from __future__ import annotations

import base64
import importlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from secprofiles.devcluster import CA_LIFETIME, SERVICE_ACCOUNT_ISSUER, ApiError, DevCluster, write_pair
from secprofiles.pki import CertificateAuthority

__all__ = [
    "ServiceAccountCredentials",
    "WebhookTLS",
    "api_client",
    "apply_object",
    "create_node",
    "create_service_account",
    "delete_node",
    "ensure_namespace",
    "register_webhook",
    "request_token",
    "service_account_kubeconfig",
    "webhook_configuration",
    "webhook_tls",
]


def _q(s: str) -> str:
    return quote(s, safe="")


def api_client(kubeconfig: Path | str) -> Any:
    """An official ``kubernetes.client.ApiClient`` configured from ``kubeconfig``."""
    config: Any = importlib.import_module("kubernetes.config")
    return config.new_client_from_config(config_file=str(kubeconfig))


# --------------------------------------------------------------------------- generic


def apply_object(cluster: DevCluster, collection_path: str, body: Mapping[str, Any]) -> Any:
    """Create ``body`` under ``collection_path``, or replace it if it exists; return the stored object.

    ``collection_path`` is the REST collection, e.g. ``/api/v1/namespaces/ns/configmaps``.
    """
    name = body["metadata"]["name"]
    try:
        return cluster.api("POST", collection_path, dict(body))
    except ApiError as exc:
        if exc.status != 409:
            raise
    item_path = f"{collection_path}/{_q(name)}"
    current = cluster.get(item_path)
    updated = dict(body)
    updated["metadata"] = {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
    return cluster.api("PUT", item_path, updated)


# --------------------------------------------------------------------------- service accounts


@dataclass(frozen=True)
class ServiceAccountCredentials:
    """A service account's token and a kubeconfig that uses it."""

    namespace: str
    name: str
    token: str
    kubeconfig: Path

    @property
    def username(self) -> str:
        """The user name the API server sees (``system:serviceaccount:NS:NAME``)."""
        return f"system:serviceaccount:{self.namespace}:{self.name}"


def ensure_namespace(cluster: DevCluster, namespace: str) -> None:
    """Create ``namespace`` unless it exists."""
    try:
        cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    except ApiError as exc:
        if exc.status != 409:
            raise


def create_service_account(cluster: DevCluster, namespace: str, name: str) -> Any:
    """Create the namespace (if missing) and the service account (if missing); return the SA."""
    ensure_namespace(cluster, namespace)
    path = f"/api/v1/namespaces/{_q(namespace)}/serviceaccounts"
    try:
        return cluster.api("POST", path, {"metadata": {"name": name}})
    except ApiError as exc:
        if exc.status != 409:
            raise
    return cluster.get(f"{path}/{_q(name)}")


def request_token(
    cluster: DevCluster,
    namespace: str,
    name: str,
    *,
    audiences: Sequence[str] = (SERVICE_ACCOUNT_ISSUER,),
    expiration_seconds: int = 3600,
) -> str:
    """Mint a bound token for a service account with the TokenRequest API."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": list(audiences), "expirationSeconds": expiration_seconds},
    }
    path = f"/api/v1/namespaces/{_q(namespace)}/serviceaccounts/{_q(name)}/token"
    result = cluster.api("POST", path, body)
    return str(result["status"]["token"])


def service_account_kubeconfig(
    cluster: DevCluster,
    namespace: str,
    name: str,
    *,
    path: Path | None = None,
    expiration_seconds: int = 3600,
) -> ServiceAccountCredentials:
    """Create a service account (and namespace) if needed and write a kubeconfig using its token.

    The kubeconfig goes to ``path`` (default ``<run_dir>/sa-<namespace>-<name>.kubeconfig``).
    Grant rights separately (e.g. with a RoleBinding) - a fresh service account has almost none.
    """
    create_service_account(cluster, namespace, name)
    token = request_token(cluster, namespace, name, expiration_seconds=expiration_seconds)
    if path is None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{namespace}-{name}")
        path = cluster.run_dir / f"sa-{safe}.kubeconfig"
    user = f"system:serviceaccount:{namespace}:{name}"
    cluster.write_kubeconfig(path, user, {"token": token})
    return ServiceAccountCredentials(namespace=namespace, name=name, token=token, kubeconfig=path)


# --------------------------------------------------------------------------- webhooks


@dataclass(frozen=True)
class WebhookTLS:
    """Serving certificate for a webhook on 127.0.0.1 and the CA bundle that trusts it."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    ca_bundle: bytes

    @property
    def ca_bundle_b64(self) -> str:
        """``caBundle`` as it appears in a webhook configuration (base64 of the PEM)."""
        return base64.b64encode(self.ca_bundle).decode()


def webhook_tls(directory: Path, *, ca: CertificateAuthority | None = None) -> WebhookTLS:
    """Write a serving certificate for ``127.0.0.1``/``localhost`` into ``directory``.

    It is signed by ``ca`` (e.g. ``cluster.ca``) or by a new CA of its own.
    """
    ca = ca or CertificateAuthority.create("secprofiles-webhook-ca", CA_LIFETIME)
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = write_pair(ca, directory, "webhook", "127.0.0.1", hosts=["localhost", "127.0.0.1"],
                                     server=True)
    ca_file = directory / "webhook-ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    return WebhookTLS(cert_file=cert_file, key_file=key_file, ca_file=ca_file, ca_bundle=ca.cert_pem)


def webhook_configuration(
    kind: Literal["Mutating", "Validating"],
    name: str,
    *,
    port: int,
    path: str,
    ca_bundle: bytes,
    rules: Sequence[Mapping[str, Any]],
    webhook_name: str | None = None,
    failure_policy: Literal["Fail", "Ignore"] = "Fail",
    side_effects: str = "None",
    timeout_seconds: int = 10,
    namespace_selector: Mapping[str, Any] | None = None,
    object_selector: Mapping[str, Any] | None = None,
    match_policy: Literal["Exact", "Equivalent"] = "Equivalent",
    reinvocation_policy: Literal["Never", "IfNeeded"] = "Never",
) -> dict[str, Any]:
    """Body of a ``MutatingWebhookConfiguration`` or ``ValidatingWebhookConfiguration``.

    The single webhook calls ``https://127.0.0.1:{port}{path}`` and trusts ``ca_bundle``
    (PEM bytes).  ``rules`` are ``admissionregistration.k8s.io/v1`` RuleWithOperations, e.g.
    ``{"apiGroups": ["secprofiles.io"], "apiVersions": ["v1alpha1"],
    "operations": ["CREATE", "UPDATE"], "resources": ["seccompprofiles"]}``.
    """
    if not path.startswith("/"):
        path = "/" + path
    webhook: dict[str, Any] = {
        "name": webhook_name or f"{name}.secprofiles.io",
        "clientConfig": {
            "url": f"https://127.0.0.1:{port}{path}",
            "caBundle": base64.b64encode(ca_bundle).decode(),
        },
        "rules": [dict(r) for r in rules],
        "failurePolicy": failure_policy,
        "sideEffects": side_effects,
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": timeout_seconds,
        "matchPolicy": match_policy,
    }
    if namespace_selector is not None:
        webhook["namespaceSelector"] = dict(namespace_selector)
    if object_selector is not None:
        webhook["objectSelector"] = dict(object_selector)
    if kind == "Mutating":
        webhook["reinvocationPolicy"] = reinvocation_policy
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": f"{kind}WebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [webhook],
    }


def register_webhook(cluster: DevCluster, body: Mapping[str, Any]) -> Any:
    """Create (or replace) a webhook configuration built by :func:`webhook_configuration`."""
    plural = (
        "mutatingwebhookconfigurations"
        if body["kind"].startswith("Mutating")
        else ("validatingwebhookconfigurations")
    )
    return apply_object(cluster, f"/apis/admissionregistration.k8s.io/v1/{plural}", body)


# --------------------------------------------------------------------------- nodes


def create_node(
    cluster: DevCluster,
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    taints: Sequence[Mapping[str, str]] = (),
    annotations: Mapping[str, str] | None = None,
    kubelet_version: str | None = None,
    container_runtime_version: str = "containerd://2.0.0",
    kernel_version: str = "6.1.0",
    os_image: str = "Debian GNU/Linux 12 (bookworm)",
    architecture: str = "amd64",
) -> Any:
    """Create a Node object for a simulated node and mark it Ready; return the node.

    ``taints`` are ``{"key": ..., "value": ..., "effect": "NoSchedule"}`` mappings.
    No kubelet heart-beats for it, which is why the dev cluster runs without the
    node lifecycle controller: the node stays Ready until deleted.
    """
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": architecture,
        **(labels or {}),
    }
    metadata: dict[str, Any] = {"name": name, "labels": node_labels}
    if annotations:
        metadata["annotations"] = dict(annotations)
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = [dict(t) for t in taints]
    cluster.api(
        "POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": metadata, "spec": spec}
    )
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "simulated node (secprofiles devcluster)",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    resources = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    status = {
        "status": {
            "conditions": [ready],
            "capacity": resources,
            "allocatable": resources,
            "addresses": [{"type": "Hostname", "address": name}],
            "nodeInfo": {
                "kubeletVersion": kubelet_version or cluster.version or "v0.0.0",
                "containerRuntimeVersion": container_runtime_version,
                "kernelVersion": kernel_version,
                "osImage": os_image,
                "operatingSystem": "linux",
                "architecture": architecture,
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kubeProxyVersion": "",
            },
        }
    }
    cluster.api(
        "PATCH", f"/api/v1/nodes/{_q(name)}/status", status, content_type="application/merge-patch+json"
    )
    # The TaintNodesByCondition admission plugin gave the new node node.kubernetes.io/not-ready,
    # which the (disabled) node lifecycle controller would lift once Ready: keep exactly ``taints``.
    return cluster.api(
        "PATCH",
        f"/api/v1/nodes/{_q(name)}",
        {"spec": {"taints": spec.get("taints")}},
        content_type="application/merge-patch+json",
    )


def delete_node(cluster: DevCluster, name: str) -> None:
    """Delete a Node object (ignores a missing one)."""
    cluster.api("DELETE", f"/api/v1/nodes/{_q(name)}", ok=(200, 202, 404))
