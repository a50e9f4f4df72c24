"""``manifests/overlays/recording`` against the real control plane: it applies, the base agent keeps its privileges,
and the operator, the agent and the node recorder, each running as its service account (the recorder and the agent
with tokens bound to a Pod on their Node, as the kubelet issues them), carry a recording through to its profile
without a single 403, while the recorder's identity can do nothing else: no other node's report, no spec, no pods.

Needs root, podman + runc for the recorded container (its pod's cgroup is made by podman, as in test_recording).
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools import install
from devtools.api import SyncApi
from devtools.busybox import EXPECTED_OUTPUT, FILES_AND_PROCESSES
from devtools.cluster import DevCluster
from devtools.commands import WebhookServing
from devtools.objects import (
    OPERATOR_NAMESPACE,
    create_node,
    delete_everything,
    node_bound_agent_kubeconfig,
    request_token,
    service_account_kubeconfig,
)
from devtools.ports import free_port
from devtools.waiting import eventually
from secprofiles.kube.client import ApiError, Credentials
from secprofiles.recording.report import report_name
from secprofiles.resources import resource_path
from tests.conftest import REPO, missing_install
from tests.integration.deployment import applied, forbidden_lines, one
from tests.integration.processes import AgentProcess, OperatorProcess, RecorderProcess
from tests.runtime.conftest import IMAGE, RUN, Runner, podman, recording_possible  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.controlplane,
    pytest.mark.skipif(install.kustomize_command() is None, reason=missing_install("kubectl or kustomize")),
]
NS = OPERATOR_NAMESPACE
CGROUP_PARENT = "secprofiles-recording-deploy-test"
POD_WORKLOAD = FILES_AND_PROCESSES + "sleep 2\n"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return install.render(REPO / "manifests/overlays/recording")


@pytest.fixture(scope="module")
def installed(devcluster: DevCluster, rendered: list[dict[str, Any]]) -> Iterator[DevCluster]:
    """Everything the overlay renders, applied for real (``deployment.applied``)."""
    with applied(devcluster, rendered) as cluster:
        yield cluster


def test_the_overlay_adds_a_recorder_and_leaves_the_agent_as_it_was(rendered: list[dict[str, Any]]) -> None:
    base = install.render(REPO / "manifests/base")
    assert one(rendered, "DaemonSet", "secprofiles-agent") == one(base, "DaemonSet", "secprofiles-agent")
    assert one(base, "ClusterRole", "secprofiles-agent") == one(rendered, "ClusterRole", "secprofiles-agent")
    spec = one(rendered, "DaemonSet", "secprofiles-recorder")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["hostPID"] and spec["hostNetwork"] and spec["serviceAccountName"] == "secprofiles-recorder"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["AUDIT_READ", "NET_ADMIN"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] and \
        not container["securityContext"]["allowPrivilegeEscalation"]
    assert not [v for v in spec["volumes"] if "hostPath" in v]  # hostPID shows the host's /proc: no mount
    agent_image = one(rendered, "DaemonSet", "secprofiles-agent")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["image"] == agent_image
    operator_args = one(rendered, "Deployment", "secprofiles-operator")["spec"]["template"]["spec"]["containers"][0]
    assert "--recording" in operator_args["args"]
    base_args = one(base, "Deployment", "secprofiles-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--recording" not in base_args


def test_the_recorders_admission_policy_type_checks(installed: DevCluster) -> None:
    path = resource_path("ValidatingAdmissionPolicy", name="secprofiles-recorder-own-reports")

    def checked() -> dict[str, Any] | None:
        status: dict[str, Any] = installed.admin.request("GET", path).get("status") or {}
        return status if status.get("observedGeneration") else None

    status = eventually(checked, timeout=30, what="VAP type checking")
    assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status


def test_the_recorder_needs_the_privileged_level_like_the_agent(installed: DevCluster,
                                                                 rendered: list[dict[str, Any]]) -> None:
    namespace = f"psa-{uuid.uuid4().hex[:6]}"
    admin = installed.admin
    admin.create(resource_path("Namespace"), {"metadata": {"name": namespace, "labels": {
        "pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    try:
        admin.create(resource_path("ServiceAccount", namespace),
                     {"metadata": {"name": "secprofiles-recorder"}, "automountServiceAccountToken": False})
        template = one(rendered, "DaemonSet", "secprofiles-recorder")["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "recorder", "namespace": namespace},
               "spec": template["spec"]}
        with pytest.raises(ApiError) as refused:
            admin.request("POST", resource_path("Pod", namespace), pod, params={"dryRun": "All"})
        assert refused.value.status == 403 and "hostPID" in refused.value.message and \
            "hostNetwork" in refused.value.message
    finally:
        admin.delete(resource_path("Namespace", name=namespace))


@pytest.mark.usefixtures("recording_possible")
def test_operator_agent_and_recorder_record_as_their_accounts_without_a_single_403(
        installed: DevCluster, rendered: list[dict[str, Any]], tmp_path: Path, podman: Runner) -> None:  # noqa: F811
    cluster, admin = installed, installed.admin
    node, other = f"rec-{uuid.uuid4().hex[:6]}", f"rec-{uuid.uuid4().hex[:6]}"
    team = f"team-{uuid.uuid4().hex[:6]}"
    for leftover in admin.request("GET", resource_path("Node"))["items"]:  # every node counts for "Installed"
        admin.delete(resource_path("Node", name=leftover["metadata"]["name"]))
    admin.call(create_node, node)
    admin.create(resource_path("Namespace"), {"metadata": {"name": team, "labels": {"secprofiles.io/binding": "enabled"}}})
    port = free_port()
    config = install.loopback_webhooks(one(rendered, "MutatingWebhookConfiguration", "secprofiles"), port)
    for webhook in config["webhooks"]:  # this test's namespace only
        webhook["namespaceSelector"]["matchExpressions"].append(
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [team]})
    admin.call(install.apply, [config])
    operator_creds = admin.call(service_account_kubeconfig, cluster, NS, "secprofiles-operator",
                                path=tmp_path / "operator.kc")
    agent_creds, agent_pod = admin.call(node_bound_agent_kubeconfig, cluster, node, tmp_path / "agent.kc")
    recorder_creds, recorder_pod = admin.call(node_bound_agent_kubeconfig, cluster, node, tmp_path / "recorder.kc",
                                              service_account="secprofiles-recorder")
    operator = OperatorProcess(operator_creds.kubeconfig, tmp_path / "operator.log", "--identity", "rec-deploy",
                               "--recording", lease=True, webhook=WebhookServing(port, tmp_path / "certs"))
    agent = AgentProcess(agent_creds.kubeconfig, node, tmp_path / node)
    recorder = RecorderProcess(recorder_creds.kubeconfig, node, tmp_path / "recorder.log")
    recording = {"apiVersion": "secprofiles.io/v1alpha1", "kind": "ProfileRecording",
                 "metadata": {"name": "web", "namespace": team},
                 "spec": {"podSelector": {"matchLabels": {"app": "web"}}}}
    try:
        operator.start()
        agent.start()
        recorder.start()
        eventually(lambda: recorder.logged("recording possible"), timeout=30, what="the recorder")
        admin.create(resource_path("ProfileRecording", team), recording)
        eventually(lambda: admin.request("GET", resource_path("ProfileRecording", team, "web"))["status"]["reason"]
                   == "NoMatchingPods", timeout=60, what="the logging profile Installed")
        pod = admin.create(resource_path("Pod", team), {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": team,
                                                            "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]}})
        assert pod["metadata"]["annotations"]["secprofiles.io/recording"] == "web"
        uid = pod["metadata"]["uid"]
        report_path = resource_path("RecordingReport", team, report_name("web", node))
        eventually(lambda: admin.request("GET", report_path)["spec"]["pods"][0]["uid"] == uid, what="the report")
        cidfile = tmp_path / "cid"
        ran = subprocess.run([*RUN, "--cidfile", str(cidfile), "--cgroup-parent", f"/{CGROUP_PARENT}/pod{uid}",
                              "--security-opt", f"seccomp={agent.file(team, 'web.log')}", IMAGE, "sh", "-c",
                              POD_WORKLOAD], capture_output=True, text=True, timeout=300)
        assert ran.stdout.strip() == EXPECTED_OUTPUT, ran.stderr
        admin.patch(resource_path("Pod", team, "web-1", "status"), {"status": {"containerStatuses": [{
            "name": "app", "containerID": f"containerd://{cidfile.read_text().strip()}", "image": "busybox",
            "imageID": "busybox", "ready": True, "restartCount": 0, "state": {"running": {}}}]}})
        eventually(lambda: admin.request("GET", report_path)["status"]["containers"], what="the recorder's report")
        admin.patch(resource_path("ProfileRecording", team, "web"), {"spec": {"stop": True}})
        def ended() -> dict[str, Any] | None:
            status: dict[str, Any] = admin.request("GET", resource_path("ProfileRecording", team, "web"))["status"]
            return status if status.get("endTime") else None

        final = eventually(ended, timeout=60, what="the recording's end")
        assert (final["phase"], final["profiles"]) == ("Completed", ["web-app"]), final
        eventually(lambda: admin.get(resource_path("SeccompProfile", team, "web-app")), what="the recorded profile")
    finally:
        recorder.stop()
        agent.stop()
        operator.stop()
        asyncio.run(asyncio.to_thread(_remove_cgroups))
    for log in (tmp_path / "operator.log", agent.log, recorder.log):
        assert not forbidden_lines(log), forbidden_lines(log)

    # --- what the recorder's identity may NOT do ----------------------------------------------------------
    admin.call(create_node, other)
    others = resource_path("RecordingReport", team, report_name("web", other))
    admin.create(resource_path("RecordingReport", team), {
        "apiVersion": "secprofiles.io/v1alpha1", "kind": "RecordingReport",
        "metadata": {"name": report_name("web", other)}, "spec": {"recording": "web", "nodeName": other}})
    unbound = admin.call(request_token, NS, "secprofiles-recorder")
    tokens = {"bound": recorder_creds.token, "unbound": unbound}
    identities = {name: SyncApi(Credentials(cluster.server, str(cluster.ca_file), token=token))
                  for name, token in tokens.items()}
    seen: list[str] = []

    def as_recorder(method: str, api_path: str, body: Any = None, identity: str = "bound") -> int:
        try:
            identities[identity].request(method, api_path, body, content_type="application/merge-patch+json")
            status, message = 200, ""
        except ApiError as error:
            status, message = error.status, error.message
        assert "resulted in error" not in message, message  # denied by a rule, not by a broken expression
        seen.append(f"{status} {method} {api_path}: {message}")
        return status

    try:
        assert as_recorder("PATCH", f"{report_path}/status", {"status": {"final": True}}) == 200  # its own: allowed
        assert as_recorder("PATCH", f"{others}/status", {"status": {"final": True}}) == 403
        assert as_recorder("PATCH", report_path, {"spec": {"stop": False}}) == 403  # RBAC: no spec
        assert as_recorder("PATCH", f"{report_path}/status", {"status": {"final": True}}, "unbound") == 403
        assert as_recorder("GET", resource_path("Pod", team)) == 403
        assert as_recorder("GET", resource_path("ProfileRecording", team)) == 403
        assert as_recorder("GET", resource_path("SeccompProfile", team)) == 403
        assert as_recorder("DELETE", report_path) == 403
    finally:
        for identity in identities.values():
            identity.close()
    reasons = "\n".join(seen)
    for expected in (f"may not write RecordingReport {report_name('web', other)} of node {other}",
                     "<none: token not bound to a pod>", 'cannot patch resource "recordingreports"',
                     'cannot list resource "pods"', 'cannot list resource "profilerecordings"',
                     'cannot delete resource "recordingreports"'):
        assert expected in reasons, reasons

    for name in (node, other):
        admin.delete(resource_path("Node", name=name))
    for pod_name in (agent_pod["metadata"]["name"], recorder_pod["metadata"]["name"]):
        admin.delete(resource_path("Pod", NS, pod_name))
    admin.call(delete_everything, "ProfileRecording", {"fieldSelector": f"metadata.namespace={team}"})
    admin.call(delete_everything, "SeccompProfile", {"fieldSelector": f"metadata.namespace={team}"})
    admin.delete(resource_path("Namespace", name=team))


def _remove_cgroups() -> None:
    for directory in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}"):
        for child in sorted((d for d in directory.rglob("*") if d.is_dir()), reverse=True):
            child.rmdir()
        directory.rmdir()
