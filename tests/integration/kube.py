"""Helpers for integration tests: an async API client for the dev cluster, waiting, CRD installation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from secprofiles import deploy
from secprofiles.devcluster import ApiError as DevClusterApiError
from secprofiles.kubeapi import ApiError, Credentials, KubeApi, resource_path

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def eventually(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """The synchronous ``wait_for``: call ``check`` until truthy; a failed assertion or missing object is retried."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, KeyError, TypeError, FileNotFoundError, DevClusterApiError) as error:
            last = error
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


async def wait_for(probe: Callable[[], Awaitable[T | None]], timeout: float = 20.0, what: str = "condition") -> T:
    """Call ``probe`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


def webhook_config(port: int, *, path_prefix: str = "", ca_bundle: str | None = None,
                   failure_policy: str | None = None) -> dict[str, Any]:
    """manifests/base/webhook.yaml, its Services replaced by a server on 127.0.0.1:``port`` (deploy.loopback_webhooks).

    ``failure_policy``, when given, replaces the shipped one (an overlay's choice); see
    :func:`deploy.loopback_webhooks` for ``path_prefix`` and ``ca_bundle``.
    """
    shipped = yaml.safe_load((REPO / "manifests/base/webhook.yaml").read_text())
    config = deploy.loopback_webhooks(shipped, port, path_prefix=path_prefix, ca_bundle=ca_bundle)
    if failure_policy:
        for webhook in config["webhooks"]:
            webhook["failurePolicy"] = failure_policy
    return config


async def apply_admission_policies(api: KubeApi, manifest: Path) -> None:
    """Server-side apply every ValidatingAdmissionPolicy(Binding) of ``manifest``."""
    for doc in yaml.safe_load_all(await asyncio.to_thread(manifest.read_text)):
        plural = "validatingadmissionpolicies" if doc["kind"] == "ValidatingAdmissionPolicy" \
            else "validatingadmissionpolicybindings"
        await api.patch(f"/apis/admissionregistration.k8s.io/v1/{plural}/{doc['metadata']['name']}", doc, "apply",
                        params={"fieldManager": "secprofiles-tests", "force": "true"})


def open_api(kubeconfig: Path | str) -> KubeApi:
    """A KubeApi for the given kubeconfig."""
    return KubeApi(Credentials.from_kubeconfig(kubeconfig), user_agent="secprofiles-tests")


async def install_crds(api: KubeApi) -> None:
    """Apply every CRD in crds/ (server-side apply) and wait until each is Established."""
    for path in sorted((REPO / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        await api.patch(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}", crd, "apply",
                        params={"fieldManager": "secprofiles-tests", "force": "true"})

        async def established(name: str = name) -> bool:
            crd = await api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = ((crd or {}).get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        await wait_for(established, what=f"CRD {name} Established")


async def ensure_namespace(api: KubeApi, name: str) -> None:
    """Create a namespace (if needed) and wait for its default service account (pods need it)."""
    try:
        await api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    except ApiError as error:
        if error.status != 409:
            raise
    await wait_for(lambda: api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
                   what=f"default service account in {name}")


async def create_node(api: KubeApi, name: str, taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A Node object standing for a simulated node."""
    body: dict[str, Any] = {"metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
                            "spec": {"taints": taints or []}}
    return await api.create("/api/v1/nodes", body)


async def delete_everything(api: KubeApi, kind: str) -> None:
    """Delete every object of one kind (finalizers removed), to isolate tests."""
    listing = await api.request("GET", resource_path(kind))
    for item in listing.get("items") or []:
        meta = item["metadata"]
        path = resource_path(kind, meta.get("namespace"), meta["name"])
        await api.delete(path)
        try:
            await api.patch(path, {"metadata": {"finalizers": None}})
        except ApiError as error:
            if error.status != 404:
                raise
