"""Installing ``manifests/`` into a cluster without a Kubernetes client library (tests and the sandbox).

* :func:`render` - ``kubectl kustomize DIR`` (or ``kustomize build DIR``) into a list of objects (nothing here
  re-implements it);
* :func:`apply` - server-side apply of rendered objects through :meth:`DevCluster.api`, CRDs first and waited
  for until Established, so objects of those CRDs apply in the same call;
* :func:`node_bound_agent_token` - what the kubelet gives an agent pod: a token bound to a Pod on a Node, so it
  carries ``authentication.kubernetes.io/node-name`` (which the ValidatingAdmissionPolicies check);
* :func:`loopback_webhooks` - the shipped webhook configuration pointed at an operator process on 127.0.0.1
  instead of its Service (no kubelet runs the operator's pod here).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import yaml

from secprofiles.devcluster import SERVICE_ACCOUNT_ISSUER, DevCluster

__all__ = [
    "NAMESPACE",
    "KustomizeUnavailableError",
    "apply",
    "collection_path",
    "item_path",
    "kustomize_command",
    "loopback_webhooks",
    "node_bound_agent_token",
    "render",
    "render_resources",
]

NAMESPACE: Final = "secprofiles-system"
FIELD_MANAGER: Final = "secprofiles-deploy"

#: kind -> (API path prefix, plural, namespaced) for every kind ``manifests/`` renders (and a few more).
REST: Final[Mapping[str, tuple[str, str, bool]]] = {
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Service": ("/api/v1", "services", True),
    "Secret": ("/api/v1", "secrets", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Pod": ("/api/v1", "pods", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ValidatingAdmissionPolicy": ("/apis/admissionregistration.k8s.io/v1", "validatingadmissionpolicies", False),
    "ValidatingAdmissionPolicyBinding": ("/apis/admissionregistration.k8s.io/v1",
                                         "validatingadmissionpolicybindings", False),
    "MutatingWebhookConfiguration": ("/apis/admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations",
                                     False),
    "ValidatingWebhookConfiguration": ("/apis/admissionregistration.k8s.io/v1",
                                       "validatingwebhookconfigurations", False),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "SeccompProfile": ("/apis/secprofiles.io/v1alpha1", "seccompprofiles", True),
    "AppArmorProfile": ("/apis/secprofiles.io/v1alpha1", "apparmorprofiles", False),
    "ProfileBinding": ("/apis/secprofiles.io/v1alpha1", "profilebindings", True),
}

#: Apply order: what others depend on first.
_ORDER: Final = ("CustomResourceDefinition", "Namespace", "ServiceAccount", "ClusterRole", "Role",
                 "ClusterRoleBinding", "RoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


class KustomizeUnavailableError(RuntimeError):
    """Neither ``kubectl`` (which carries kustomize) nor ``kustomize`` is installed."""


def kustomize_command() -> list[str] | None:
    """``kubectl kustomize`` or, without kubectl, ``kustomize build`` (scripts/install.sh provides it); or None."""
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    return None


def render(directory: Path) -> list[dict[str, Any]]:
    """The kustomize build of ``directory`` as a list of objects (empty documents dropped)."""
    command = kustomize_command()
    if command is None:
        raise KustomizeUnavailableError("neither kubectl nor kustomize is installed (run scripts/install.sh)")
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} {directory} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_resources(directory: Path) -> list[dict[str, Any]]:
    """NOT kustomize: the objects of a kustomization's ``resources`` (files and nested directories), untransformed.

    Enough for the sandbox when ``kubectl`` is missing: the base's CRDs, namespace, service accounts, RBAC and
    admission policies need none of kustomize's transformations (images, labels, patches are ignored here).
    """
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            spec = yaml.safe_load((directory / name).read_text())
            break
    else:
        raise FileNotFoundError(f"no kustomization in {directory}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(render_resources(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return objects


def collection_path(obj: Mapping[str, Any]) -> str:
    """The REST collection of ``obj`` (its namespace's, for namespaced kinds)."""
    prefix, plural, namespaced = REST[obj["kind"]]
    if namespaced:
        namespace = obj["metadata"].get("namespace") or "default"
        return f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{prefix}/{plural}"


def item_path(obj: Mapping[str, Any]) -> str:
    """The REST path of ``obj`` itself."""
    return f"{collection_path(obj)}/{quote(obj['metadata']['name'], safe='')}"


def _sort_key(obj: Mapping[str, Any]) -> int:
    kind = obj["kind"]
    return _ORDER.index(kind) if kind in _ORDER else len(_ORDER)


def _wait(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _established(cluster: DevCluster, name: str) -> bool:
    crd = cluster.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    return any(c["type"] == "Established" and c["status"] == "True"
               for c in (crd.get("status") or {}).get("conditions") or [])


def apply(cluster: DevCluster, objects: Iterable[Mapping[str, Any]], *, field_manager: str = FIELD_MANAGER,
          dry_run: bool = False, on_applied: Callable[[Mapping[str, Any]], None] | None = None) -> list[Any]:
    """Server-side apply every object (``force``: this manager owns what it applies); return the results.

    CRDs go first and are waited for until Established (unless ``dry_run``).
    """
    ordered = sorted(objects, key=_sort_key)
    results: list[Any] = []
    crds_done = False
    params = {"fieldManager": field_manager, "force": "true", **({"dryRun": "All"} if dry_run else {})}
    for obj in ordered:
        if not crds_done and obj["kind"] != "CustomResourceDefinition":
            crds_done = True
            if not dry_run:
                for crd in ordered:
                    if crd["kind"] == "CustomResourceDefinition":
                        name = crd["metadata"]["name"]
                        _wait(partial(_established, cluster, name), 60, f"CRD {name} Established")
        results.append(cluster.api("PATCH", f"{item_path(obj)}?{urlencode(params)}", dict(obj),
                                   content_type="application/apply-patch+yaml"))
        if on_applied is not None:
            on_applied(obj)
    return results


def node_bound_agent_token(cluster: DevCluster, node: str, *, namespace: str = NAMESPACE,
                           service_account: str = "secprofiles-agent", image: str = "secprofiles-agent",
                           expiration_seconds: int = 3600) -> tuple[str, dict[str, Any]]:
    """A token for the agent's service account bound to a Pod on ``node``; returns (token, pod).

    Like the kubelet's projected token, it carries the pod's node as the
    ``authentication.kubernetes.io/node-name`` extra (ServiceAccountTokenPodNodeInfo). The Pod object (its
    name ``secprofiles-agent-<node>``) never runs without a kubelet; deleting it invalidates the token.
    """
    pods = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods"
    name = f"{service_account}-{node}"
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                             "labels": {"app.kubernetes.io/name": service_account}},
            "spec": {"nodeName": node, "serviceAccountName": service_account,
                     "automountServiceAccountToken": False,
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "agent", "image": image}]}}
    pod: dict[str, Any] = cluster.api("POST", pods, body, ok=(201, 409))
    if pod.get("kind") == "Status":
        pod = cluster.get(f"{pods}/{quote(name, safe='')}")
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": [SERVICE_ACCOUNT_ISSUER], "expirationSeconds": expiration_seconds,
                        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name,
                                           "uid": pod["metadata"]["uid"]}}}
    result = cluster.api("POST", f"/api/v1/namespaces/{quote(namespace, safe='')}/serviceaccounts/"
                                 f"{quote(service_account, safe='')}/token", request)
    return str(result["status"]["token"]), pod


def loopback_webhooks(config: Mapping[str, Any], port: int, *, path_prefix: str = "",
                      ca_bundle: str | None = None) -> dict[str, Any]:
    """A copy of the webhook configuration ``config`` whose webhooks call ``https://127.0.0.1:<port><path>``.

    Each webhook's ``clientConfig.service`` is replaced by that URL, its path kept (``path_prefix`` goes before
    it); nothing else of the policy changes. ``ca_bundle`` (base64 PEM) is set when given; without it the
    operator injects its own CA, as it does into the Service-based configuration.
    """
    result: dict[str, Any] = copy.deepcopy(dict(config))
    for webhook in result["webhooks"]:
        client: dict[str, Any] = {
            "url": f"https://127.0.0.1:{port}{path_prefix}{webhook['clientConfig']['service']['path']}"}
        if ca_bundle:
            client["caBundle"] = ca_bundle
        webhook["clientConfig"] = client
    return result


def write_token_kubeconfig(cluster: DevCluster, path: Path, user: str, token: str) -> Path:
    """A kubeconfig for ``cluster`` that authenticates with ``token``."""
    return cluster.write_kubeconfig(path, user, {"token": token})


def select(objects: Sequence[Mapping[str, Any]], kinds: Iterable[str]) -> list[dict[str, Any]]:
    """The objects of the given kinds, in their order."""
    wanted = set(kinds)
    return [dict(obj) for obj in objects if obj["kind"] in wanted]
