"""What integration tests add to ``devtools``: an API client per kubeconfig, the shipped webhook configuration
pointed at a test's operator, TLS for a test's own webhook server, and what a node reports, read by the contract."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devtools import install
from devtools.api import SyncApi
from devtools.clusterpki import CA_LIFETIME, write_pair
from devtools.commands import REPO
from secprofiles.kube.client import Credentials, KubeApi
from secprofiles.kube.pki import CertificateAuthority
from secprofiles.model import keys, schema
from secprofiles.model.evaluate import evaluate
from secprofiles.resources import resource_path
from tests.reports import bucket_holds, failure


def open_api(kubeconfig: Path | str) -> KubeApi:
    """A KubeApi for the given kubeconfig."""
    return KubeApi(Credentials.from_kubeconfig(kubeconfig), user_agent="secprofiles-tests")


def webhook_config(port: int, *, path_prefix: str = "", ca_bundle: str | None = None,
                   failure_policy: str | None = None) -> dict[str, Any]:
    """manifests/base/webhook.yaml, its Services replaced by a server on 127.0.0.1:``port``
    (``install.loopback_webhooks``, which explains ``path_prefix`` and ``ca_bundle``); ``failure_policy``, when
    given, replaces the shipped one (an overlay's choice)."""
    shipped = yaml.safe_load((REPO / "manifests/base/webhook.yaml").read_text())
    config = install.loopback_webhooks(shipped, port, path_prefix=path_prefix, ca_bundle=ca_bundle)
    if failure_policy:
        for webhook in config["webhooks"]:
            webhook["failurePolicy"] = failure_policy
    return config


async def apply_admission_policies(api: KubeApi, manifest: Path) -> None:
    """Server-side apply every object (ValidatingAdmissionPolicies and their bindings) of ``manifest``."""
    text = await asyncio.to_thread(manifest.read_text)
    await install.apply(api, [doc for doc in yaml.safe_load_all(text) if doc], field_manager="secprofiles-tests")


@dataclass(frozen=True)
class WebhookTLS:
    """Serving certificate for a webhook on 127.0.0.1 and the CA bundle that trusts it."""

    cert_file: Path
    key_file: Path
    ca_bundle: bytes

    @property
    def ca_bundle_b64(self) -> str:
        """``caBundle`` as it appears in a webhook configuration (base64 of the PEM)."""
        return base64.b64encode(self.ca_bundle).decode()


def webhook_tls(directory: Path, ca: CertificateAuthority | None = None) -> WebhookTLS:
    """A serving certificate for ``127.0.0.1``/``localhost`` in ``directory``, signed by ``ca`` or a new CA."""
    ca = ca or CertificateAuthority.create("secprofiles-test-webhook-ca", CA_LIFETIME)
    cert, key = write_pair(ca, directory, "webhook", "127.0.0.1", hosts=["localhost", "127.0.0.1"], server=True)
    return WebhookTLS(cert, key, ca.cert_pem)


async def cluster_renderings(api: KubeApi) -> dict[str, str]:
    """The hash of every valid profile rendering in the cluster, by key: what every node must have processed
    (agents watch cluster-wide). Computed with the model, from the objects, not from any report."""
    objects = [{**item, "kind": kind} for kind in (schema.SECCOMP_PROFILE, schema.APPARMOR_PROFILE)
               for item in (await api.request("GET", resource_path(kind)))["items"]]
    specs = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o["spec"] for o in objects
             if o["kind"] == schema.SECCOMP_PROFILE}
    found = {}
    for obj in objects:
        outcome = await evaluate(obj, lambda namespace, name: specs.get((namespace, name)))
        if outcome.rendered is not None:
            found[keys.key_of(obj)] = outcome.rendered.content_hash
    return found


def node_report(admin: SyncApi, node: str) -> dict[str, Any]:
    """A node's NodeProfileStatus status (empty while it has none)."""
    found = admin.get(resource_path(schema.NODE_PROFILE_STATUS, name=node)) or {}
    status: dict[str, Any] = found.get("status") or {}
    return status


def node_has(admin: SyncApi, node: str, key: str, content_hash: str | None) -> bool:
    """Whether the node reports ``key`` processed at ``content_hash`` without a failure (None: not at all), judged
    by the contract: its bucket's digest equals that of every profile the cluster has (``cluster_renderings``)."""
    status = node_report(admin, node)
    processed = admin.call(cluster_renderings)
    if processed.get(key) != content_hash:
        return False
    return failure(status, key) is None and bucket_holds(status, processed, key)
