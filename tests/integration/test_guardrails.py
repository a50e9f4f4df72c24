"""Guardrails for tenants on the real API server: manifests/base/guardrails.yaml (CEL ValidatingAdmissionPolicies
reading Guardrail objects) and the operator's confinement (manifests/base/admission-policies.yaml).

Identities are real: a tenant's service account (a Role in its namespace only), the operator's service account
with its shipped ClusterRole, and the agent with a token bound to a Pod on its Node, as the kubelet issues.
Each refusal must name the field, the rule and the Guardrail; what is allowed must be admitted.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import install
from devtools.api import SyncApi
from devtools.cluster import DevCluster
from devtools.commands import REPO
from devtools.objects import (
    create_if_missing,
    create_node,
    node_bound_agent_kubeconfig,
    request_token,
    service_account_kubeconfig,
)
from devtools.waiting import eventually
from secprofiles.kube.client import ApiError, Credentials
from secprofiles.resources import collection_path, object_path, resource_path

pytestmark = pytest.mark.controlplane
TENANT_NS, OTHER_NS, STRICT_NS = "guarded-tenant", "guarded-other", "guarded-strict"
POLICY_FILES = ("manifests/base/guardrails.yaml", "manifests/base/admission-policies.yaml")


def _docs(path: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]


@pytest.fixture(scope="module")
def guarded(cluster: DevCluster) -> Iterator[DevCluster]:
    """The policies, namespaces, a tenant service account and the operator's RBAC; removed afterwards."""
    admin = cluster.admin
    policies = [d for path in POLICY_FILES for d in _docs(path)]
    rbac = _docs("manifests/base/rbac-operator.yaml") + _docs("manifests/base/rbac-agent.yaml") + \
        _docs("manifests/base/serviceaccounts.yaml")
    admin.call(create_if_missing, resource_path("Namespace"), {"metadata": {"name": "secprofiles-system"}})
    admin.call(install.apply, [d for d in rbac if d["kind"] not in ("Role", "RoleBinding")
                               or d["metadata"].get("namespace") == "secprofiles-system"] + policies)
    for name, labels in ((TENANT_NS, {"tenancy": "tenant"}), (OTHER_NS, {}),
                         (STRICT_NS, {"tenancy": "tenant", "tier": "strict"})):
        admin.call(create_if_missing, resource_path("Namespace"), {"metadata": {"name": name, "labels": labels}})
    admin.call(create_if_missing, resource_path("Role", TENANT_NS), {
        "metadata": {"name": "tenant"},
        "rules": [{"apiGroups": ["secprofiles.io"], "resources": ["seccompprofiles"], "verbs": ["*"]},
                  {"apiGroups": [""], "resources": ["pods", "pods/ephemeralcontainers"], "verbs": ["*"]}]})
    admin.call(create_if_missing, resource_path("RoleBinding", TENANT_NS), {
        "metadata": {"name": "tenant"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
        "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": TENANT_NS}]})
    yield cluster
    for doc in policies:
        admin.delete(object_path(doc))
    for item in admin.request("GET", resource_path("Guardrail"))["items"]:
        admin.delete(resource_path("Guardrail", name=item["metadata"]["name"]))


@pytest.fixture(scope="module")
def tenant(guarded: DevCluster) -> Iterator[SyncApi]:
    """The tenant's service account, as a client."""
    creds = guarded.admin.call(service_account_kubeconfig, guarded, TENANT_NS, "deployer")
    with SyncApi(Credentials.from_kubeconfig(creds.kubeconfig)) as client:
        yield client


def guardrail(cluster: DevCluster, name: str, spec: dict[str, Any]) -> None:
    cluster.admin.delete(resource_path("Guardrail", name=name))
    cluster.admin.create(resource_path("Guardrail"), {"apiVersion": "secprofiles.io/v1alpha1", "kind": "Guardrail",
                                                      "metadata": {"name": name}, "spec": spec})


def profile(name: str, namespace: str = TENANT_NS, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"defaultAction": "SCMP_ACT_ERRNO",
                     "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}], **spec}}


def pod(name: str, pod_type: str | None = None, container_type: str | None = None, privileged: bool = False,
        init: bool = False) -> dict[str, Any]:
    def context(kind: str | None) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if kind:
            found["seccompProfile"] = {"type": kind, **({"localhostProfile": f"secprofiles/{TENANT_NS}/p.json"}
                                                        if kind == "Localhost" else {})}
        if privileged:
            found["privileged"] = True
        return found

    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "busybox",
                                            "securityContext": context(container_type)}]}
    if pod_type:
        spec["securityContext"] = {"seccompProfile": {"type": pod_type}}
    if init:
        spec["initContainers"] = [{"name": "setup", "image": "busybox",
                                   "securityContext": {"seccompProfile": {"type": "Unconfined"}}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": TENANT_NS}, "spec": spec}


def create(cluster: DevCluster, obj: dict[str, Any], client: SyncApi | None) -> ApiError | None:
    """Create ``obj`` as ``client`` (None: admin); the refusal, or None (the object is deleted again)."""
    error = (client or cluster.admin).refusal("POST", collection_path(obj), obj)
    if error is None:
        cluster.admin.delete(object_path(obj))
    return error


def refused(cluster: DevCluster, obj: dict[str, Any], client: SyncApi | None, *words: str) -> str:
    error = create(cluster, obj, client)
    assert error is not None and error.status in (403, 422), (obj["metadata"]["name"], error)
    for word in words:
        assert word in error.message, (word, error.message)
    return error.message


def admitted(cluster: DevCluster, obj: dict[str, Any], client: SyncApi | None) -> None:
    error = create(cluster, obj, client)
    assert error is None, error


def _denied(cluster: DevCluster, obj: dict[str, Any], client: SyncApi | None) -> bool:
    error = create(cluster, obj, client)
    return error is not None and error.status == 403


BASELINE = {"namespaceSelector": {"matchLabels": {"tenancy": "tenant"}},
            "seccomp": {"allowedDefaultActions": ["SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_LOG"],
                        "allowedActions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_LOG"],
                        "forbiddenFlags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
                        "allowedBaseProfiles": ["bundled/runtime-default"]},
            "pods": {"requireSeccomp": True}}


def test_tenant_profiles_are_held_to_the_guardrail(guarded: DevCluster, tenant: SyncApi,
                                                   report_figure: Callable[[str], None]) -> None:
    cluster = guarded
    guardrail(cluster, "baseline", BASELINE)
    # Policies and parameters take effect once the API server's policy cache has them.
    eventually(lambda: _denied(cluster, profile("probe", defaultAction="SCMP_ACT_ALLOW"), tenant),
               what="the guardrail in force")
    messages = []
    for obj, words in [
        (profile("allow-all", defaultAction="SCMP_ACT_ALLOW"),
         ("spec.defaultAction: SCMP_ACT_ALLOW is not allowed", "Guardrail baseline", "allowedDefaultActions")),
        (profile("spec-allow", flags=["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]),
         ("spec.flags: SECCOMP_FILTER_FLAG_SPEC_ALLOW forbidden", "Guardrail baseline", "forbiddenFlags")),
        (profile("trace", syscalls=[{"names": ["ptrace"], "action": "SCMP_ACT_TRACE"}]),
         ("spec.syscalls[].action: SCMP_ACT_TRACE not allowed", "allowedActions")),
        (profile("base", baseProfileName="bundled/audit"),
         ("spec.baseProfileName: bundled/audit is not allowed", "allowedBaseProfiles")),
    ]:
        messages.append(refused(cluster, obj, tenant, *words, TENANT_NS))
    admitted(cluster, profile("fine"), tenant)
    admitted(cluster, profile("fine-base", baseProfileName="bundled/runtime-default"), tenant)
    # Namespaces the selector does not pick are untouched (admin there: the tenant has no rights in them).
    admitted(cluster, profile("allow-all", OTHER_NS, defaultAction="SCMP_ACT_ALLOW"), None)
    # Admins are held to it too in a selected namespace: the guardrail is about the namespace, not the caller.
    refused(cluster, profile("allow-all-admin", defaultAction="SCMP_ACT_ALLOW"), None, "spec.defaultAction")
    report_figure(f"guardrail on SeccompProfiles: {len(messages)} tenant violations refused naming field, rule and "
                  "Guardrail; 2 compliant tenant profiles and 1 profile of an unselected namespace admitted; e.g. "
                  f"{messages[0]!r}")


def test_an_allow_list_of_syscalls_with_match_expressions(guarded: DevCluster) -> None:
    cluster = guarded
    guardrail(cluster, "strict", {"namespaceSelector": {"matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["strict"]}]},
        "seccomp": {"allowedSyscalls": ["read", "write", "exit_group", "futex"]}})
    eventually(lambda: _denied(cluster, profile("probe", STRICT_NS, syscalls=[
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW"}]), None), what="the strict guardrail")
    refused(cluster, profile("mount", STRICT_NS, syscalls=[{"names": ["read", "mount", "ptrace"],
                                                             "action": "SCMP_ACT_ALLOW"}]), None,
            "spec.syscalls[].names: mount, ptrace may not be allowed", "Guardrail strict", "allowedSyscalls")
    refused(cluster, profile("log-all", STRICT_NS, defaultAction="SCMP_ACT_LOG"), None,
            "spec.defaultAction: SCMP_ACT_LOG allows every syscall", "Guardrail strict")
    admitted(cluster, profile("listed", STRICT_NS), None)
    # A denying rule may name anything; only what is allowed is limited.
    admitted(cluster, profile("deny-mount", STRICT_NS, syscalls=[{"names": ["mount"], "action": "SCMP_ACT_ERRNO"}]),
             None)
    # The tenant namespace (tenancy=tenant, no tier) is not selected by this one.
    admitted(cluster, profile("mount", TENANT_NS, syscalls=[{"names": ["mount"], "action": "SCMP_ACT_ALLOW"}]), None)
    cluster.admin.request("DELETE", resource_path("Guardrail", name="strict"))


def test_pods_must_run_with_a_confining_seccomp_profile(guarded: DevCluster, tenant: SyncApi,
                                                        report_figure: Callable[[str], None]) -> None:
    cluster = guarded
    guardrail(cluster, "baseline", BASELINE)
    eventually(lambda: _denied(cluster, pod("probe"), tenant), what="the pod guardrail in force")
    refusals = [
        (pod("none"), ("spec.containers[app].securityContext.seccompProfile", "the pod sets none",
                       "Guardrail baseline", "pods.requireSeccomp")),
        (pod("unconfined-pod", pod_type="Unconfined"), ("containers[app]", "the pod sets Unconfined")),
        (pod("unconfined-container", pod_type="RuntimeDefault", container_type="Unconfined"), ("containers[app]",)),
        (pod("unconfined-init", pod_type="RuntimeDefault", init=True), ("spec.initContainers[setup]",)),
        (pod("privileged", pod_type="RuntimeDefault", privileged=True), ("containers[app]", "privileged")),
    ]
    messages = [refused(cluster, obj, tenant, *words) for obj, words in refusals]
    admitted(cluster, pod("runtime-default", pod_type="RuntimeDefault"), tenant)
    admitted(cluster, pod("localhost", container_type="Localhost"), tenant)
    admitted(cluster, pod("mixed", pod_type="Unconfined", container_type="RuntimeDefault"), tenant)
    other = pod("none-elsewhere")
    other["metadata"]["namespace"] = OTHER_NS
    admitted(cluster, other, None)
    report_figure(f"guardrail on pods: {len(refusals)} tenant pods refused (no profile, Unconfined at pod, container "
                  "and init level, privileged), 3 admitted (RuntimeDefault, Localhost, container overriding pod), "
                  f"1 in an unselected namespace admitted; e.g. {messages[0]!r}")


def test_the_operator_is_confined_to_status_and_its_finalizer_and_never_blocked(guarded: DevCluster) -> None:
    cluster, admin = guarded, guarded.admin
    guardrail(cluster, "baseline", BASELINE)
    path = resource_path("SeccompProfile", TENANT_NS, "legacy")
    admin.delete(path)
    # A profile that predates the guardrail and violates it: the operator must still be able to do its job.
    admin.request("DELETE", resource_path("Guardrail", name="baseline"))
    eventually(lambda: admin.refusal("POST", resource_path("SeccompProfile", TENANT_NS),
                                     profile("legacy", defaultAction="SCMP_ACT_ALLOW")) is None,
               what="the guardrail lifted")
    guardrail(cluster, "baseline", BASELINE)
    eventually(lambda: _denied(cluster, profile("probe", defaultAction="SCMP_ACT_ALLOW"), None),
               what="the guardrail back in force")
    token = admin.call(request_token, "secprofiles-system", "secprofiles-operator")
    merge = "application/merge-patch+json"
    with SyncApi(Credentials(cluster.server, str(cluster.ca_file), token=token)) as operator:

        def as_operator(body: dict[str, Any], sub: str = "") -> ApiError | None:
            return operator.refusal("PATCH", path + sub, body, content_type=merge)

        assert as_operator({"metadata": {"finalizers": ["secprofiles.io/in-use-protection"]}}) is None
        assert as_operator({"status": {"phase": "Installed"}}, "/status") is None
        error = as_operator({"spec": {"defaultAction": "SCMP_ACT_ERRNO"}})
        assert error is not None and error.status == 403
        assert "spec: the secprofiles operator may change only status and its finalizer" in error.message
        assert "secprofiles-operator-status-and-finalizer-only" in error.message
        error = as_operator({"metadata": {"labels": {"owned": "yes"}}})
        assert error is not None and error.status == 403 and "metadata.labels" in error.message
        error = as_operator({"metadata": {"finalizers": ["secprofiles.io/in-use-protection", "other.io/x"]}})
        assert error is not None and error.status == 403 and "metadata.finalizers" in error.message
        assert as_operator({"metadata": {"finalizers": None}}) is None
    # A tenant deleting its (violating) profile is never held up by the guardrail either.
    assert admin.refusal("DELETE", path) is None


def test_the_agent_is_never_blocked(guarded: DevCluster, tmp_path: Path) -> None:
    cluster, admin = guarded, guarded.admin
    guardrail(cluster, "everywhere", {"namespaceSelector": {}, "seccomp": {"allowedDefaultActions": ["SCMP_ACT_ERRNO"]},
                                      "pods": {"requireSeccomp": True}})
    node = f"guarded-{uuid.uuid4().hex[:6]}"
    admin.call(create_node, node, taints=[{"key": "secprofiles.io/not-ready", "value": "true", "effect": "NoSchedule"}])
    pod_name = ""
    try:
        # The agent's own Pod (no seccomp profile of its own in this test) lives in secprofiles-system, which the
        # guardrail bindings exclude: it is admitted even under a Guardrail selecting every namespace.
        creds, agent_pod = admin.call(node_bound_agent_kubeconfig, cluster, node, tmp_path / "agent.kubeconfig")
        pod_name = agent_pod["metadata"]["name"]
        report = {"apiVersion": "secprofiles.io/v1alpha1", "kind": "NodeProfileStatus", "metadata": {"name": node}}
        with SyncApi(Credentials.from_kubeconfig(creds.kubeconfig)) as agent:
            assert agent.refusal("POST", resource_path("NodeProfileStatus"), report) is None
            assert agent.refusal("PATCH", resource_path("NodeProfileStatus", name=node, subresource="status"),
                                 {"status": {"ready": True}}, content_type="application/merge-patch+json") is None
            assert agent.refusal("PATCH", resource_path("Node", name=node),
                                 [{"op": "test", "path": "/spec/taints/0/key", "value": "secprofiles.io/not-ready"},
                                  {"op": "remove", "path": "/spec/taints/0"}],
                                 content_type="application/json-patch+json") is None
    finally:
        admin.request("DELETE", resource_path("Guardrail", name="everywhere"))
        admin.delete(resource_path("NodeProfileStatus", name=node))
        if pod_name:
            admin.delete(resource_path("Pod", "secprofiles-system", pod_name))
        admin.delete(resource_path("Node", name=node))
