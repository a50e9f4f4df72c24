"""Guardrails for tenants on the real API server: manifests/base/guardrails.yaml (CEL ValidatingAdmissionPolicies
reading Guardrail objects) and the operator's confinement (manifests/base/admission-policies.yaml).

Identities are real: a tenant's service account (a Role in its namespace only), the operator's service account
with its shipped ClusterRole, and the agent with a token bound to a Pod on its Node, as the kubelet issues.
Each refusal must name the field, the rule and the Guardrail; what is allowed must be admitted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from secprofiles import deploy
from secprofiles.devcluster import DevCluster
from secprofiles.devcluster_clients import create_node, delete_node, request_token, service_account_kubeconfig
from tests.integration.conftest import GROUP
from tests.integration.kube import REPO, eventually

pytestmark = pytest.mark.controlplane
MERGE = "application/merge-patch+json"
TENANT_NS, OTHER_NS, STRICT_NS = "guarded-tenant", "guarded-other", "guarded-strict"
POLICY_FILES = ("manifests/base/guardrails.yaml", "manifests/base/admission-policies.yaml")


def _docs(path: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]


@pytest.fixture(scope="module")
def guarded(cluster: DevCluster) -> Iterator[DevCluster]:
    """The policies, namespaces, a tenant service account and the operator's RBAC; removed afterwards."""
    policies = [d for path in POLICY_FILES for d in _docs(path)]
    rbac = _docs("manifests/base/rbac-operator.yaml") + _docs("manifests/base/rbac-agent.yaml") + \
        _docs("manifests/base/serviceaccounts.yaml")
    cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": "secprofiles-system"}}, ok=(201, 409))
    deploy.apply(cluster, [d for d in rbac if d["kind"] not in ("Role", "RoleBinding")
                           or d["metadata"].get("namespace") == "secprofiles-system"] + policies)
    for name, labels in ((TENANT_NS, {"tenancy": "tenant"}), (OTHER_NS, {}),
                         (STRICT_NS, {"tenancy": "tenant", "tier": "strict"})):
        cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": name, "labels": labels}}, ok=(201, 409))
    cluster.api("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{TENANT_NS}/roles", {
        "metadata": {"name": "tenant"},
        "rules": [{"apiGroups": ["secprofiles.io"], "resources": ["seccompprofiles"], "verbs": ["*"]},
                  {"apiGroups": [""], "resources": ["pods", "pods/ephemeralcontainers"], "verbs": ["*"]}]},
        ok=(201, 409))
    cluster.api("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{TENANT_NS}/rolebindings", {
        "metadata": {"name": "tenant"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
        "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": TENANT_NS}]}, ok=(201, 409))
    yield cluster
    for doc in policies:
        cluster.api("DELETE", deploy.item_path(doc), ok=(200, 202, 404))
    for kind in ("guardrails",):
        for item in cluster.get(f"{GROUP}/{kind}")["items"]:
            cluster.api("DELETE", f"{GROUP}/{kind}/{item['metadata']['name']}", ok=(200, 404))


@pytest.fixture(scope="module")
def tenant_token(guarded: DevCluster) -> str:
    return service_account_kubeconfig(guarded, TENANT_NS, "deployer").token


def guardrail(cluster: DevCluster, name: str, spec: dict[str, Any]) -> None:
    cluster.api("DELETE", f"{GROUP}/guardrails/{name}", ok=(200, 404))
    cluster.api("POST", f"{GROUP}/guardrails", {"apiVersion": "secprofiles.io/v1alpha1", "kind": "Guardrail",
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


def create(cluster: DevCluster, obj: dict[str, Any], token: str | None) -> tuple[int, str]:
    namespace = obj["metadata"]["namespace"]
    path = f"/api/v1/namespaces/{namespace}/pods" if obj["kind"] == "Pod" else \
        f"{GROUP}/namespaces/{namespace}/seccompprofiles"
    status, body = cluster.request("POST", path, obj, token=token)
    if status == 201:
        cluster.api("DELETE", f"{path}/{obj['metadata']['name']}", ok=(200, 202, 404))
    message = json.loads(body).get("message", "") if status != 201 else ""
    return status, message


def refused(cluster: DevCluster, obj: dict[str, Any], token: str | None, *words: str) -> str:
    status, message = create(cluster, obj, token)
    assert status in (403, 422), (status, message)
    for word in words:
        assert word in message, (word, message)
    return message


def admitted(cluster: DevCluster, obj: dict[str, Any], token: str | None) -> None:
    status, message = create(cluster, obj, token)
    assert status == 201, (status, message)


BASELINE = {"namespaceSelector": {"matchLabels": {"tenancy": "tenant"}},
            "seccomp": {"allowedDefaultActions": ["SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_LOG"],
                        "allowedActions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_LOG"],
                        "forbiddenFlags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
                        "allowedBaseProfiles": ["bundled/runtime-default"]},
            "pods": {"requireSeccomp": True}}


def test_tenant_profiles_are_held_to_the_guardrail(guarded: DevCluster, tenant_token: str,
                                                   report_figure: Callable[[str], None]) -> None:
    cluster = guarded
    guardrail(cluster, "baseline", BASELINE)
    # Policies and parameters take effect once the API server's policy cache has them.
    eventually(lambda: create(cluster, profile("probe", defaultAction="SCMP_ACT_ALLOW"), tenant_token)[0] == 403,
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
        messages.append(refused(cluster, obj, tenant_token, *words, TENANT_NS))
    admitted(cluster, profile("fine"), tenant_token)
    admitted(cluster, profile("fine-base", baseProfileName="bundled/runtime-default"), tenant_token)
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
    eventually(lambda: create(cluster, profile("probe", STRICT_NS, syscalls=[
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW"}]), None)[0] == 403, what="the strict guardrail")
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
    cluster.api("DELETE", f"{GROUP}/guardrails/strict")


def test_pods_must_run_with_a_confining_seccomp_profile(guarded: DevCluster, tenant_token: str,
                                                        report_figure: Callable[[str], None]) -> None:
    cluster = guarded
    guardrail(cluster, "baseline", BASELINE)
    eventually(lambda: create(cluster, pod("probe"), tenant_token)[0] == 403, what="the pod guardrail in force")
    refusals = [
        (pod("none"), ("spec.containers[app].securityContext.seccompProfile", "the pod sets none",
                       "Guardrail baseline", "pods.requireSeccomp")),
        (pod("unconfined-pod", pod_type="Unconfined"), ("containers[app]", "the pod sets Unconfined")),
        (pod("unconfined-container", pod_type="RuntimeDefault", container_type="Unconfined"), ("containers[app]",)),
        (pod("unconfined-init", pod_type="RuntimeDefault", init=True), ("spec.initContainers[setup]",)),
        (pod("privileged", pod_type="RuntimeDefault", privileged=True), ("containers[app]", "privileged")),
    ]
    messages = [refused(cluster, obj, tenant_token, *words) for obj, words in refusals]
    admitted(cluster, pod("runtime-default", pod_type="RuntimeDefault"), tenant_token)
    admitted(cluster, pod("localhost", container_type="Localhost"), tenant_token)
    admitted(cluster, pod("mixed", pod_type="Unconfined", container_type="RuntimeDefault"), tenant_token)
    other = pod("none-elsewhere")
    other["metadata"]["namespace"] = OTHER_NS
    admitted(cluster, other, None)
    report_figure(f"guardrail on pods: {len(refusals)} tenant pods refused (no profile, Unconfined at pod, container "
                  "and init level, privileged), 3 admitted (RuntimeDefault, Localhost, container overriding pod), "
                  f"1 in an unselected namespace admitted; e.g. {messages[0]!r}")


def test_the_operator_is_confined_to_status_and_its_finalizer_and_never_blocked(guarded: DevCluster) -> None:
    cluster = guarded
    guardrail(cluster, "baseline", BASELINE)
    path = f"{GROUP}/namespaces/{TENANT_NS}/seccompprofiles/legacy"
    cluster.api("DELETE", path, ok=(200, 404))
    # A profile that predates the guardrail and violates it: the operator must still be able to do its job.
    cluster.api("DELETE", f"{GROUP}/guardrails/baseline")
    eventually(lambda: cluster.request("POST", f"{GROUP}/namespaces/{TENANT_NS}/seccompprofiles",
                                       profile("legacy", defaultAction="SCMP_ACT_ALLOW"))[0] == 201,
               what="the guardrail lifted")
    guardrail(cluster, "baseline", BASELINE)
    eventually(lambda: create(cluster, profile("probe", defaultAction="SCMP_ACT_ALLOW"), None)[0] == 403,
               what="the guardrail back in force")
    token = request_token(cluster, "secprofiles-system", "secprofiles-operator")

    def as_operator(body: dict[str, Any], sub: str = "") -> tuple[int, str]:
        status, raw = cluster.request("PATCH", path + sub, body, content_type=MERGE, token=token)
        return status, "" if status == 200 else json.loads(raw).get("message", "")

    assert as_operator({"metadata": {"finalizers": ["secprofiles.io/in-use-protection"]}})[0] == 200
    assert as_operator({"status": {"phase": "Installed"}}, "/status")[0] == 200
    status, message = as_operator({"spec": {"defaultAction": "SCMP_ACT_ERRNO"}})
    assert status == 403 and "spec: the secprofiles operator may change only status and its finalizer" in message
    assert "secprofiles-operator-status-and-finalizer-only" in message
    status, message = as_operator({"metadata": {"labels": {"owned": "yes"}}})
    assert status == 403 and "metadata.labels" in message
    status, message = as_operator({"metadata": {"finalizers": ["secprofiles.io/in-use-protection", "other.io/x"]}})
    assert status == 403 and "metadata.finalizers" in message
    assert as_operator({"metadata": {"finalizers": None}})[0] == 200
    # A tenant deleting its (violating) profile is never held up by the guardrail either.
    assert cluster.request("DELETE", path)[0] == 200


def test_the_agent_is_never_blocked(guarded: DevCluster) -> None:
    cluster = guarded
    guardrail(cluster, "everywhere", {"namespaceSelector": {}, "seccomp": {"allowedDefaultActions": ["SCMP_ACT_ERRNO"]},
                                      "pods": {"requireSeccomp": True}})
    node = f"guarded-{uuid.uuid4().hex[:6]}"
    create_node(cluster, node, taints=[{"key": "secprofiles.io/not-ready", "value": "true", "effect": "NoSchedule"}])
    try:
        # The agent's own Pod (no seccomp profile of its own in this test) lives in secprofiles-system, which the
        # guardrail bindings exclude: it is admitted even under a Guardrail selecting every namespace.
        token, _ = deploy.node_bound_agent_token(cluster, node)
        report = {"apiVersion": "secprofiles.io/v1alpha1", "kind": "NodeProfileStatus", "metadata": {"name": node}}
        status, raw = cluster.request("POST", f"{GROUP}/nodeprofilestatuses", report, token=token)
        assert status == 201, raw
        status, raw = cluster.request("PATCH", f"{GROUP}/nodeprofilestatuses/{node}/status",
                                      {"status": {"ready": True}}, content_type=MERGE, token=token)
        assert status == 200, raw
        status, raw = cluster.request("PATCH", f"/api/v1/nodes/{node}",
                                      [{"op": "test", "path": "/spec/taints/0/key", "value": "secprofiles.io/not-ready"},
                                       {"op": "remove", "path": "/spec/taints/0"}],
                                      content_type="application/json-patch+json", token=token)
        assert status == 200, raw
    finally:
        cluster.api("DELETE", f"{GROUP}/guardrails/everywhere")
        cluster.api("DELETE", f"{GROUP}/nodeprofilestatuses/{node}", ok=(200, 404))
        cluster.api("DELETE", f"/api/v1/namespaces/secprofiles-system/pods/secprofiles-agent-{node}",
                    ok=(200, 404))
        delete_node(cluster, node)
