"""Objects the dev tooling creates in a dev cluster, written once, against ``KubeApi``.

Namespaces (with their default service account), simulated Nodes (Ready, with exactly the taints asked for),
service accounts with tokens and kubeconfigs, the node-bound token the kubelet gives an agent pod, this project's
CRDs (Established and served), and clean-up. Async; synchronous callers use ``SyncApi.call`` (e.g.
``cluster.admin.call(create_node, "node-1")``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml

from devtools.cluster import SERVICE_ACCOUNT_ISSUER, DevCluster
from devtools.waiting import wait_for
from secprofiles.kube import clock
from secprofiles.kube.client import ApiError, KubeApi
from secprofiles.kube.resources import ApiResource
from secprofiles.objects import Object
from secprofiles.resources import resource_path

REPO = Path(__file__).resolve().parents[1]
OPERATOR_NAMESPACE = "secprofiles-system"


async def create_if_missing(api: KubeApi, path: str, body: Object) -> Object | None:
    """POST ``body`` to the collection ``path``; None when it already exists (409)."""
    try:
        return await api.create(path, body)
    except ApiError as error:
        if error.status != 409:
            raise
        return None


async def ensure_namespace(api: KubeApi, name: str, labels: Mapping[str, str] | None = None) -> None:
    """Create a namespace (if missing) and wait for its default service account (pods need it)."""
    await create_if_missing(api, resource_path("Namespace"), {"metadata": {"name": name, "labels": dict(labels or {})}})
    await wait_for(lambda: api.get(resource_path("ServiceAccount", name, "default")), 60,
                   f"default service account in {name}")


async def create_node(api: KubeApi, name: str, *, labels: Mapping[str, str] | None = None,
                      taints: Sequence[Mapping[str, str]] = ()) -> Object:
    """A Node object standing for a simulated node, Ready, with exactly ``taints``.

    No kubelet heart-beats for it, which is why the dev cluster runs without the node lifecycle controller: the
    node stays Ready until deleted.
    """
    node_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                   **(labels or {})}
    await api.create(resource_path("Node"), {"apiVersion": "v1", "kind": "Node",
                                             "metadata": {"name": name, "labels": node_labels}})
    stamp = clock.timestamp()
    resources = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    await api.patch(resource_path("Node", name=name, subresource="status"), {"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "simulated node (secprofiles devtools)", "lastHeartbeatTime": stamp,
                        "lastTransitionTime": stamp}],
        "capacity": resources, "allocatable": resources, "addresses": [{"type": "Hostname", "address": name}],
        "nodeInfo": {"kubeletVersion": "v0.0.0-simulated", "containerRuntimeVersion": "containerd://simulated",
                     "kernelVersion": "", "osImage": "", "operatingSystem": "linux", "architecture": "amd64",
                     "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""}}})
    # The TaintNodesByCondition admission plugin gave the new node node.kubernetes.io/not-ready, which the
    # (disabled) node lifecycle controller would lift once Ready: keep exactly ``taints``.
    return await api.patch(resource_path("Node", name=name), {"spec": {"taints": [dict(t) for t in taints] or None}})


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


async def request_token(api: KubeApi, namespace: str, name: str, *, expiration_seconds: int = 3600,
                        bound_pod: Object | None = None) -> str:
    """A token of a service account from the TokenRequest API, optionally bound to ``bound_pod``."""
    spec: Object = {"audiences": [SERVICE_ACCOUNT_ISSUER], "expirationSeconds": expiration_seconds}
    if bound_pod is not None:
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": bound_pod["metadata"]["name"],
                                  "uid": bound_pod["metadata"]["uid"]}
    result = await api.create(resource_path("ServiceAccount", namespace, name, "token"),
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    return str(result["status"]["token"])


async def service_account_kubeconfig(api: KubeApi, cluster: DevCluster, namespace: str, name: str, *,
                                     path: Path | None = None) -> ServiceAccountCredentials:
    """Create a service account (and its namespace) if needed and write a kubeconfig using a token of it.

    The kubeconfig goes to ``path`` (default ``<run_dir>/sa-<namespace>-<name>.kubeconfig``). Grant rights
    separately: a fresh service account has almost none.
    """
    await create_if_missing(api, resource_path("Namespace"), {"metadata": {"name": namespace}})
    await create_if_missing(api, resource_path("ServiceAccount", namespace), {"metadata": {"name": name}})
    token = await request_token(api, namespace, name)
    if path is None:
        path = cluster.run_dir / f"sa-{re.sub(r'[^A-Za-z0-9_.-]', '_', f'{namespace}-{name}')}.kubeconfig"
    credentials = ServiceAccountCredentials(namespace, name, token, path)
    cluster.write_kubeconfig(path, credentials.username, {"token": token})
    return credentials


async def node_bound_agent_kubeconfig(api: KubeApi, cluster: DevCluster, node: str, path: Path, *,
                                      namespace: str = OPERATOR_NAMESPACE, service_account: str = "secprofiles-agent"
                                      ) -> tuple[ServiceAccountCredentials, Object]:
    """A kubeconfig at ``path`` with the agent's token bound to a Pod on ``node``; returns it and the Pod.

    Like the kubelet's projected token, it carries the pod's node as the ``authentication.kubernetes.io/node-name``
    extra (ServiceAccountTokenPodNodeInfo), which the admission policies confining agents check. The Pod object
    (``<service account>-<node>``) never runs without a kubelet; deleting it invalidates the token.
    """
    name = f"{service_account}-{node}"
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": service_account}},
            "spec": {"nodeName": node, "serviceAccountName": service_account, "automountServiceAccountToken": False,
                     "tolerations": [{"operator": "Exists"}], "containers": [{"name": "agent", "image": "agent"}]}}
    pod = await create_if_missing(api, resource_path("Pod", namespace), body) \
        or await api.request("GET", resource_path("Pod", namespace, name))
    credentials = ServiceAccountCredentials(namespace, service_account,
                                            await request_token(api, namespace, service_account, bound_pod=pod), path)
    cluster.write_kubeconfig(path, credentials.username, {"token": credentials.token})
    return credentials, pod


async def install_crds(api: KubeApi, directory: Path = REPO / "crds") -> None:
    """Apply every CRD of ``directory`` (this checkout's ``crds/``; server-side apply) and wait until each is
    Established and served."""
    crds = await asyncio.to_thread(_read_crds, directory)
    for crd in crds:
        name = crd["metadata"]["name"]
        await api.patch(resource_path("CustomResourceDefinition", name=name), crd, "apply",
                        params={"fieldManager": "secprofiles-devtools", "force": "true"})
        await wait_for(partial(crd_established, api, name), 60, f"CRD {name} Established")
    for crd in crds:
        served = ApiResource.from_crd(crd, crd["spec"]["versions"][0]["name"])
        await wait_for(partial(_served, api, served), 60, f"{crd['spec']['names']['kind']} served")


def _read_crds(directory: Path) -> list[Object]:
    return [yaml.safe_load(path.read_text()) for path in sorted(directory.glob("*.yaml"))]


async def crd_established(api: KubeApi, name: str) -> bool:
    """Whether the CRD ``name`` is Established."""
    crd = await api.get(resource_path("CustomResourceDefinition", name=name)) or {}
    return any(c["type"] == "Established" and c["status"] == "True"
               for c in (crd.get("status") or {}).get("conditions") or [])


async def _served(api: KubeApi, resource: ApiResource) -> bool:
    try:
        await api.request("GET", resource.path(), params={"limit": "1"})
    except ApiError:  # its REST handler may need a moment after Established
        return False
    return True


async def delete_everything(api: KubeApi, kind: str, params: dict[str, str] | None = None) -> None:
    """Delete every object of one kind (optionally selected by ``params``), finalizers removed, to isolate tests."""
    listing = await api.request("GET", resource_path(kind), params=params)
    for item in listing.get("items") or []:
        meta = item["metadata"]
        path = resource_path(kind, meta.get("namespace"), meta["name"])
        await api.delete(path)
        try:
            await api.patch(path, {"metadata": {"finalizers": None}})
        except ApiError as error:
            if error.status != 404:
                raise
