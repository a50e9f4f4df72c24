"""``manifests/`` against the real control plane: everything applies, and the RBAC + admission policies are
exactly enough for the operator and the agent, which run as local processes AS the manifests' service accounts.

The agent's token is minted like the kubelet's projected token: bound to a Pod object on the agent's Node, so it
carries ``authentication.kubernetes.io/node-name`` and the ValidatingAdmissionPolicies can tell which node it is.
Rendering needs ``kubectl kustomize`` or ``kustomize`` (scripts/install.sh provides the latter).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools import install
from devtools.api import SyncApi
from devtools.cluster import DevCluster
from devtools.commands import WebhookServing
from devtools.objects import (
    OPERATOR_NAMESPACE,
    create_node,
    node_bound_agent_kubeconfig,
    request_token,
    service_account_kubeconfig,
)
from devtools.ports import free_port
from devtools.waiting import eventually
from secprofiles.kube.client import ApiError, Credentials
from secprofiles.model.evaluate import evaluate_sync
from secprofiles.resources import object_path, resource_path
from tests.conftest import REPO, missing_install
from tests.integration.deployment import applied, forbidden_lines, one
from tests.integration.kube import node_has
from tests.integration.processes import AgentProcess, OperatorProcess

pytestmark = [
    pytest.mark.controlplane,
    pytest.mark.skipif(install.kustomize_command() is None, reason=missing_install("kubectl or kustomize")),
]
NS = OPERATOR_NAMESPACE
TAINT = {"key": "secprofiles.io/not-ready", "effect": "NoSchedule"}
LEASE = resource_path("Lease", NS, "secprofiles-operator")
DENIED = (403,)  # the policies deny with reason Forbidden: never 422, which the agent reads as a lost race
# Our client says "403 Forbidden: ...", Kopf "Forbidden"/"Not enough permissions". A bare "403" also matches
# millisecond timestamps and content hashes.


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """``kubectl kustomize manifests/`` (the base, through the top-level kustomization)."""
    return install.render(REPO / "manifests")


@pytest.fixture(scope="module")
def installed(devcluster: DevCluster, rendered: list[dict[str, Any]]) -> Iterator[DevCluster]:
    """ALL of the rendered manifests, server-side applied for real (``deployment.applied``)."""
    with applied(devcluster, rendered) as cluster:
        yield cluster


def test_everything_applies_and_is_stored(installed: DevCluster, rendered: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in rendered}
    assert {"CustomResourceDefinition", "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
            "Deployment", "DaemonSet", "Service", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
            "PodDisruptionBudget", "NetworkPolicy", "Role", "RoleBinding", "MutatingWebhookConfiguration"} <= kinds
    for obj in rendered:
        stored = installed.admin.request("GET", object_path(obj))
        assert stored["metadata"]["name"] == obj["metadata"]["name"]
    for vap in (o for o in rendered if o["kind"] == "ValidatingAdmissionPolicy"):
        # Typed CEL checking happens asynchronously; a type error would show up here.
        def checked(vap: dict[str, Any] = vap) -> Any:
            status = installed.admin.request("GET", object_path(vap)).get("status") or {}
            return status if status.get("observedGeneration") else None

        status = eventually(checked, timeout=30, what="VAP type checking")
        assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status
    images = {c["image"] for o in rendered if o["kind"] in ("Deployment", "DaemonSet")
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {"ghcr.io/secprofiles/secprofiles-operator:0.1.0", "ghcr.io/secprofiles/secprofiles-agent:0.1.0"}


def test_sandbox_fallback_reads_the_same_objects(rendered: list[dict[str, Any]]) -> None:
    """Without kubectl the sandbox reads the base's resources untransformed: the same objects."""
    plain = install.render_resources(REPO / "manifests/base")
    assert sorted((o["kind"], o["metadata"]["name"]) for o in plain) == \
        sorted((o["kind"], o["metadata"]["name"]) for o in rendered)


@pytest.mark.parametrize("overlay", ["seccomp-only", "cert-manager", "kubelet-root"])
def test_overlays_render(overlay: str) -> None:
    objects = install.render(REPO / "manifests/overlays" / overlay)
    agent = one(objects, "DaemonSet", "secprofiles-agent")["spec"]["template"]["spec"]
    operator = one(objects, "Deployment", "secprofiles-operator")["spec"]["template"]["spec"]
    container = agent["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    paths = {v["name"]: v.get("hostPath", {}).get("path") for v in agent["volumes"]}
    if overlay == "seccomp-only":
        assert "add" not in container["securityContext"]["capabilities"]
        assert container["securityContext"]["appArmorProfile"] == {"type": "RuntimeDefault"}
        assert "securityfs" not in mounts and "securityfs" not in paths
    elif overlay == "kubelet-root":
        assert "--kubelet-root=/var/lib/k0s/kubelet" in container["args"]
        assert mounts["seccomp"] == "/host/var/lib/k0s/kubelet/seccomp/secprofiles"
        assert paths["seccomp"] == "/var/lib/k0s/kubelet/seccomp/secprofiles"
    else:
        assert "--cert-source=files" in operator["containers"][0]["args"]
        assert {o["kind"] for o in objects} >= {"Certificate", "Issuer"}


def test_every_container_has_memory_request_equal_to_limit(rendered: list[dict[str, Any]]) -> None:
    """The Kubernetes security checklist: a memory limit no higher than the request (no overcommit on nodes)."""
    checked = 0
    for workload in rendered:
        if workload["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for container in workload["spec"]["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert resources["limits"]["memory"] == resources["requests"]["memory"], (workload["kind"], resources)
            checked += 1
    assert checked == 2


# --------------------------------------------------------------------------- Pod Security


def _as_pod(workload: dict[str, Any], namespace: str) -> dict[str, Any]:
    template = workload["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": workload["metadata"]["name"], "namespace": namespace,
                         "labels": template["metadata"].get("labels", {})},
            "spec": template["spec"]}


def test_operator_meets_restricted_and_agent_needs_privileged(installed: DevCluster,
                                                               rendered: list[dict[str, Any]]) -> None:
    namespace = f"psa-{uuid.uuid4().hex[:6]}"
    admin = installed.admin
    admin.create(resource_path("Namespace"), {"metadata": {"name": namespace, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    try:
        for account in ("secprofiles-operator", "secprofiles-agent"):
            admin.create(resource_path("ServiceAccount", namespace),
                         {"metadata": {"name": account}, "automountServiceAccountToken": False})
        pods, dry_run = resource_path("Pod", namespace), {"dryRun": "All"}
        operator = _as_pod(one(rendered, "Deployment", "secprofiles-operator"), namespace)
        assert admin.request("POST", pods, operator, params=dry_run)["metadata"]["name"] == "secprofiles-operator"
        agent = _as_pod(one(rendered, "DaemonSet", "secprofiles-agent"), namespace)
        with pytest.raises(ApiError) as refused:
            admin.request("POST", pods, agent, params=dry_run)
        assert refused.value.status == 403
        message = refused.value.message
        assert "violates PodSecurity" in message and "hostPath" in message and "MAC_ADMIN" in message
    finally:
        admin.delete(resource_path("Namespace", name=namespace))
    labels = one(rendered, "Namespace", NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"


# --------------------------------------------------------------------------- least privilege, proven


def _profile(namespace: str, names: list[str]) -> dict[str, Any]:
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
            "metadata": {"name": "prevent-chmod", "namespace": namespace},
            "spec": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO"}]}}


def _phase(cluster: DevCluster, path: str, content_hash: str) -> bool:
    status = cluster.admin.request("GET", path).get("status") or {}
    return status.get("phase") == "Installed" and status.get("contentHash") == content_hash


def test_operator_and_agent_run_as_their_accounts_without_a_single_403(installed: DevCluster,
                                                                        tmp_path: Path) -> None:
    cluster, admin = installed, installed.admin
    node, other = f"deploy-{uuid.uuid4().hex[:6]}", f"deploy-{uuid.uuid4().hex[:6]}"
    namespace = f"team-{uuid.uuid4().hex[:6]}"
    for leftover in admin.request("GET", resource_path("Node"))["items"]:  # the operator counts every node
        admin.delete(resource_path("Node", name=leftover["metadata"]["name"]))
    admin.call(create_node, node, taints=[TAINT])
    admin.create(resource_path("Namespace"), {"metadata": {"name": namespace}})
    operator_creds = admin.call(service_account_kubeconfig, cluster, NS, "secprofiles-operator",
                                path=tmp_path / "operator.kc")
    agent_creds, pod = admin.call(node_bound_agent_kubeconfig, cluster, node, tmp_path / "agent.kc")
    token = agent_creds.token
    # As deployed: leader election on the Lease (no --standalone) and the webhook with its own certificate, so
    # the Lease, Secret, webhook configuration and ProfileBinding rules are used by this identity too.
    operator = OperatorProcess(operator_creds.kubeconfig, tmp_path / "operator.log", "--identity", "deploy-test",
                               lease=True, webhook=WebhookServing(free_port(), tmp_path / "certs"))
    operator.start()
    agent = AgentProcess(agent_creds.kubeconfig, node, tmp_path / node, apparmor=True)
    try:
        agent.start()
        eventually(lambda: admin.request("GET", LEASE)["spec"]["holderIdentity"] == "deploy-test", timeout=30,
                   what="the operator to hold the leader-election Lease")
        eventually(lambda: admin.get(resource_path("Secret", NS, "secprofiles-webhook-tls")), timeout=30,
                   what="the webhook's certificate Secret")
        # The agent removes the readiness taint from its own Node: allowed by RBAC + VAP.
        eventually(lambda: not (admin.request("GET", resource_path("Node", name=node))["spec"].get("taints")),
                   timeout=30,
                   what="the agent to remove its node's taint")
        eventually(lambda: admin.request("GET", resource_path("NodeProfileStatus", name=node))["status"]["ready"],
                   what="ready")

        # Full lifecycle: create -> Installed on the node -> update -> delete.
        obj = _profile(namespace, ["chmod", "fchmodat"])
        path = resource_path("SeccompProfile", namespace, "prevent-chmod")
        admin.create(resource_path("SeccompProfile", namespace), obj)
        first = evaluate_sync(obj).rendered
        assert first is not None
        eventually(lambda: _phase(cluster, path, first.content_hash), timeout=60, what="Installed (operator)")
        assert agent.file(namespace, "prevent-chmod").read_bytes() == first.content
        admin.create(resource_path("ProfileBinding", namespace), {
            "apiVersion": "secprofiles.io/v1alpha1", "kind": "ProfileBinding",
            "metadata": {"name": "all", "namespace": namespace},
            "spec": {"profileRef": {"kind": "SeccompProfile", "name": "prevent-chmod"}, "images": ["*"]}})
        eventually(lambda: admin.request("GET", resource_path("ProfileBinding", namespace, "all")).get(
            "status", {}).get("observedGeneration") == 1, timeout=30, what="the ProfileBinding's status (read, then guarded write)")

        updated = _profile(namespace, ["chmod", "fchmodat", "fchmod"])
        admin.patch(path, {"spec": updated["spec"]})
        second = evaluate_sync(updated).rendered
        assert second is not None and second.content_hash != first.content_hash
        eventually(lambda: _phase(cluster, path, second.content_hash), timeout=60, what="update Installed")
        assert agent.file(namespace, "prevent-chmod").read_bytes() == second.content

        admin.request("DELETE", path)
        eventually(lambda: admin.get(path) is None, timeout=60,
                   what="deletion (the operator releases its finalizer)")
        eventually(lambda: not agent.file(namespace, "prevent-chmod").exists(), what="file removed from the node")
        eventually(lambda: node_has(admin, node, f"seccomp/{namespace}/prevent-chmod", None),
                   what="gone from the node's report")
    finally:
        agent.stop()
        operator.stop()

    operator_log = (tmp_path / "operator.log").read_text(errors="replace")
    assert "standalone" not in operator_log.lower(), operator_log[-3000:]
    assert not forbidden_lines(tmp_path / "operator.log"), forbidden_lines(tmp_path / "operator.log")
    assert not forbidden_lines(agent.log), forbidden_lines(agent.log)

    # --- what the agent's identity may NOT do -------------------------------------------------------------
    admin.call(create_node, other, taints=[TAINT])
    admin.patch(resource_path("Node", name=node), {"spec": {"taints": [
        TAINT, {"key": "example.com/other", "effect": "NoSchedule"}]}})
    admin.create(resource_path("NodeProfileStatus"), {
        "apiVersion": "secprofiles.io/v1alpha1", "kind": "NodeProfileStatus", "metadata": {"name": other}})

    seen: list[str] = []
    unbound = admin.call(request_token, NS, "secprofiles-agent")
    identities = {bearer: SyncApi(Credentials(cluster.server, str(cluster.ca_file), token=bearer))
                  for bearer in (token, unbound)}

    def as_agent(method: str, api_path: str, body: Any, content_type: str = "application/merge-patch+json",
                 bearer: str = token) -> int:
        try:
            identities[bearer].request(method, api_path, body, content_type=content_type)
            status, message = 200, ""
        except ApiError as error:
            status, message = error.status, error.message
        assert "resulted in error" not in message, message  # denied by a rule, not by a broken expression
        seen.append(f"{status} {method} {api_path}: {message}")
        return status

    own, theirs = resource_path("Node", name=node), resource_path("Node", name=other)
    # Another node: not even the readiness taint.
    assert as_agent("PATCH", theirs, {"spec": {"taints": None}}) in DENIED
    # Its own node: no labels, no annotations, no other taint removed, no taint added, no unschedulable.
    assert as_agent("PATCH", own, {"metadata": {"labels": {"evil": "yes"}}}) in DENIED
    assert as_agent("PATCH", own, {"metadata": {"annotations": {"evil": "yes"}}}) in DENIED
    assert as_agent("PATCH", own, {"spec": {"taints": None}}) in DENIED
    assert as_agent("PATCH", own, {"spec": {"taints": [TAINT]}}) in DENIED  # drops example.com/other
    assert as_agent("PATCH", own, {"spec": {"taints": [
        TAINT, {"key": "example.com/other", "effect": "NoSchedule"},
        {"key": "x", "effect": "NoExecute"}]}}) in DENIED
    assert as_agent("PATCH", own, {"spec": {"unschedulable": True}}) in DENIED
    assert as_agent("DELETE", own, None) == 403  # RBAC: no delete
    # Another node's NodeProfileStatus: neither create nor write status.
    assert as_agent("PATCH", resource_path("NodeProfileStatus", name=other, subresource="status"),
                    {"status": {"ready": True}}) in DENIED
    npstatus = {"apiVersion": "secprofiles.io/v1alpha1", "kind": "NodeProfileStatus",
                "metadata": {"name": f"{other}-x"}}
    assert as_agent("POST", resource_path("NodeProfileStatus"), npstatus, "application/json") in DENIED
    # A token not bound to a pod (no node-name claim) may touch no node, not even to drop the taint.
    assert as_agent("PATCH", theirs, {"spec": {"taints": None}}, bearer=unbound) in DENIED
    # And the positive control: exactly what the agent does is still allowed on its own node.
    assert as_agent("PATCH", own, {"spec": {"taints": [{"key": "example.com/other", "effect": "NoSchedule"}]}}) \
        == 200
    for identity in identities.values():
        identity.close()
    assert admin.request("GET", own)["spec"]["taints"] == [{"key": "example.com/other", "effect": "NoSchedule"}]
    reasons = "\n".join(seen)
    for expected in ("may not change Node " + other, "may not change metadata.labels",
                     "may not change metadata.annotations", "may only remove the secprofiles.io/not-ready taint",
                     "may not add or change taints", "may not change spec.unschedulable",
                     "may not write NodeProfileStatus " + other, "<none: token not bound to a pod>",
                     'cannot delete resource "nodes"'):
        assert expected in reasons, reasons

    for name in (node, other):
        admin.delete(resource_path("Node", name=name))
        admin.delete(resource_path("NodeProfileStatus", name=name))
    admin.delete(resource_path("NodeProfileStatus", name=f"{other}-x"))
    admin.delete(resource_path("Pod", NS, pod["metadata"]["name"]))
    admin.delete(resource_path("Namespace", name=namespace))
    assert admin.get(resource_path("NodeProfileStatus", name=f"{other}-x")) is None
