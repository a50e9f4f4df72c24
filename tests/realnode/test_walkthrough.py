"""The source documents' walkthrough on the real node: profiles installed by the agent's DaemonSet pod, read by a
real kubelet, enforced by containerd + runc; pods bound by the webhook the operator pods serve through their
Service; AppArmor refused by the kubelet of a kernel without it; in-use protection with a running pod."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.realcluster import RealCluster
from devtools.waiting import eventually
from secprofiles.model import keys
from tests.conftest import SEEDS, cannot_run
from tests.realnode.conftest import Kube, chmod_pod, profile_document, terminated

pytestmark = pytest.mark.realnode
EPERM = "Operation not permitted"
MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")


def _file(kube: Kube, namespace: str, name: str) -> os.PathLike[str]:
    return kube.cluster.files.kubelet_root / "seccomp" / keys.NODE_SUBDIR / namespace / f"{name}.json"


def test_the_documents_profile_makes_chmod_fail_and_without_it_chmod_succeeds(
        kube: Kube, report_figure: Callable[[str], None]) -> None:
    namespace = kube.namespace("apps")
    runs = int(os.environ.get("SECPROFILES_REALNODE_RUNS", "3"))
    to_file, to_installed, to_failed = [], [], []
    for run in range(runs):
        kube.delete("Pod", "chmod-prevented", namespace)
        kube.delete("SeccompProfile", "prevent-chmod", namespace)
        path = _file(kube, namespace, "prevent-chmod")
        eventually(lambda path=path: not os.path.exists(path), 30, f"{path} removed")  # type: ignore[misc]
        started = time.monotonic()
        kube.apply(profile_document("seccomp/prevent-chmod.yaml", namespace))
        eventually(lambda path=path: os.path.exists(path), 30, f"{path} written", interval=0.02)  # type: ignore[misc]
        to_file.append(time.monotonic() - started)
        profile = kube.wait_phase("SeccompProfile", "prevent-chmod", namespace, "Installed")
        to_installed.append(time.monotonic() - started)
        localhost = profile["status"]["localhostProfile"]
        assert localhost == f"{keys.NODE_SUBDIR}/{namespace}/prevent-chmod.json"
        kube.apply(chmod_pod("chmod-prevented", namespace, localhost))
        pod = kube.wait_pod_done("chmod-prevented", namespace)
        to_failed.append(time.monotonic() - started)
        assert pod["status"]["phase"] == "Failed", pod["status"]
        assert terminated(pod)["exitCode"] != 0 and terminated(pod)["reason"] == "Error"
        assert EPERM in kube.logs("chmod-prevented", namespace), run
    listing = kube.kubectl("get", "pods", "-n", namespace, "chmod-prevented")
    assert "Error" in listing.splitlines()[1]  # `kubectl get pods` -> chmod-prevented 0/1 Error, as documented
    file_bytes = open(_file(kube, namespace, "prevent-chmod"), "rb").read()  # noqa: SIM115 - read once
    assert json.loads(file_bytes)["syscalls"][0]["names"] == ["chmod", "fchmodat"]

    kube.delete("Pod", "chmod-allowed", namespace)
    kube.apply(chmod_pod("chmod-allowed", namespace))
    allowed = kube.wait_pod_done("chmod-allowed", namespace)
    assert allowed["status"]["phase"] == "Succeeded" and terminated(allowed)["exitCode"] == 0
    assert EPERM not in kube.logs("chmod-allowed", namespace)
    report_figure(f"{runs} runs, profile create -> file on the node p50 {statistics.median(to_file):.2f}s, "
                  f"-> Installed p50 {statistics.median(to_installed):.2f}s, -> pod Failed (EPERM) p50 "
                  f"{statistics.median(to_failed):.2f}s (max {max(to_failed):.2f}s); kubectl get pods: "
                  f"{' '.join(listing.splitlines()[1].split())}")


def test_the_pre_1_19_name_form_is_installed_as_names_and_enforced(kube: Kube) -> None:
    namespace = kube.namespace("apps")
    spec = json.loads((SEEDS / "prevent-chmod.legacy.json").read_text())
    spec["syscalls"] = [rule for rule in spec["syscalls"] if rule.get("name") != "chmodat"]  # not a syscall
    assert all("name" in rule and "names" not in rule for rule in spec["syscalls"])
    kube.apply({"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
                "metadata": {"name": "prevent-chmod-legacy", "namespace": namespace}, "spec": spec})
    profile = kube.wait_phase("SeccompProfile", "prevent-chmod-legacy", namespace, "Installed")
    written = json.loads(open(_file(kube, namespace, "prevent-chmod-legacy")).read())  # noqa: SIM115
    assert {name for rule in written["syscalls"] for name in rule["names"]} >= {"chmod", "fchmodat"}
    assert not any("name" in rule for rule in written["syscalls"])  # containerd ignores `name`
    kube.delete("Pod", "chmod-legacy", namespace)
    kube.apply(chmod_pod("chmod-legacy", namespace, profile["status"]["localhostProfile"]))
    pod = kube.wait_pod_done("chmod-legacy", namespace)
    assert pod["status"]["phase"] == "Failed" and EPERM in kube.logs("chmod-legacy", namespace)


def test_profile_binding_through_the_operator_pods_webhook(kube: Kube) -> None:
    namespace = kube.namespace("bound", {"secprofiles.io/binding": "enabled"})
    kube.apply(profile_document("seccomp/prevent-chmod.yaml", namespace))
    kube.apply({"apiVersion": "secprofiles.io/v1alpha1", "kind": "ProfileBinding",
                "metadata": {"name": "chmod-binding", "namespace": namespace},
                "spec": {"profileRef": {"kind": "SeccompProfile", "name": "prevent-chmod"},
                         "selector": {"matchLabels": {"app": "chmod"}}}})
    kube.wait_phase("SeccompProfile", "prevent-chmod", namespace, "Installed")
    # The webhook answers from its watches: a dry run tells when it knows the binding (nothing is stored).
    def bound() -> bool:
        dry = kube.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                           stdin=json.dumps(chmod_pod("chmod-bound", namespace)))
        context = json.loads(dry)["spec"]["containers"][0].get("securityContext") or {}
        return (context.get("seccompProfile") or {}).get("type") == "Localhost"

    eventually(bound, 60, "the webhook binds a dry-run pod", interval=0.5)
    kube.delete("Pod", "chmod-bound", namespace)
    kube.apply(chmod_pod("chmod-bound", namespace))  # sets no profile of its own
    stored = kube.get("Pod", "chmod-bound", namespace) or {}
    assert stored["spec"]["containers"][0]["securityContext"]["seccompProfile"] == {
        "type": "Localhost", "localhostProfile": f"{keys.NODE_SUBDIR}/{namespace}/prevent-chmod.json"}
    assert "secprofiles.io/profiles" in stored["metadata"]["annotations"]
    pod = kube.wait_pod_done("chmod-bound", namespace)
    assert pod["status"]["phase"] == "Failed" and EPERM in kube.logs("chmod-bound", namespace)
    eventually(lambda: ((kube.get("ProfileBinding", "chmod-binding", namespace) or {}).get("status") or {})
               .get("boundPods") == 1, 30, "ProfileBinding counts the pod")
    # the webhook configuration calls the Service (served by the operator pods), not a URL
    webhook = kube.get("MutatingWebhookConfiguration", "secprofiles") or {}
    client = webhook["webhooks"][0]["clientConfig"]
    assert client["service"]["name"] == "secprofiles-webhook" and "url" not in client and client.get("caBundle")


def test_apparmor_on_a_kernel_without_it_is_an_error_and_the_kubelet_refuses_the_pod(
        kube: Kube, report_figure: Callable[[str], None]) -> None:
    namespace = kube.namespace("apps")
    kube.apply(profile_document("apparmor/k8s-apparmor-example-deny-write.yaml"))
    profile = kube.wait_phase("AppArmorProfile", "k8s-apparmor-example-deny-write", None, "Error")
    assert profile["status"]["failedNodes"] == [{"node": "realnode", "message": "AppArmor not enabled on node"}]
    kube.delete("Pod", "deny-write", namespace)
    pod = chmod_pod("deny-write", namespace, command=["sh", "-c", "echo hi > /tmp/x"])
    pod["spec"]["securityContext"] = {"appArmorProfile": {"type": "Localhost",
                                                          "localhostProfile": "k8s-apparmor-example-deny-write"}}
    kube.apply(pod)
    refused = kube.wait_pod_done("deny-write", namespace)
    status = refused["status"]
    assert status["phase"] == "Failed" and status["reason"] == "AppArmor"
    assert "AppArmor is not enabled on the host" in status["message"]
    report_figure(f"AppArmorProfile phase Error, failedNodes {profile['status']['failedNodes']}; pod: "
                  f"{status['phase']} {status['reason']}: {status['message']}")


def test_in_use_protection_with_a_running_pod(kube: Kube) -> None:
    namespace = kube.namespace("inuse")
    kube.apply(profile_document("seccomp/prevent-chmod.yaml", namespace))
    profile = kube.wait_phase("SeccompProfile", "prevent-chmod", namespace, "Installed")
    kube.apply(chmod_pod("sleeper", namespace, profile["status"]["localhostProfile"], command=["sleep", "3600"]))
    eventually(lambda: ((kube.get("Pod", "sleeper", namespace) or {}).get("status") or {}).get("phase") == "Running",
               60, "sleeper Running")
    kube.cluster.cluster.admin.delete(f"/apis/secprofiles.io/v1alpha1/namespaces/{namespace}/seccompprofiles/"
                                      "prevent-chmod")
    held = kube.wait_phase("SeccompProfile", "prevent-chmod", namespace, "Terminating")
    assert held["status"]["inUseBy"]["pods"] == [f"{namespace}/sleeper"]
    time.sleep(3)  # still held while the pod runs
    assert kube.profile_phase("SeccompProfile", "prevent-chmod", namespace) == "Terminating"
    assert os.path.exists(_file(kube, namespace, "prevent-chmod"))
    kube.delete("Pod", "sleeper", namespace)
    eventually(lambda: kube.get("SeccompProfile", "prevent-chmod", namespace) is None, 30, "profile released")
    eventually(lambda: not os.path.exists(_file(kube, namespace, "prevent-chmod")), 30, "file removed")


def _memory_cgroup(pod: dict[str, Any]) -> Path:
    qos = pod["status"]["qosClass"].lower()
    container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    parent = MEMORY_CGROUP / "kubepods" / ("" if qos == "guaranteed" else qos) / f"pod{pod['metadata']['uid']}"
    return parent / container


def test_product_pods_memory_from_their_cgroups_within_their_limits(
        kube: Kube, real_cluster: RealCluster, report_figure: Callable[[str], None]) -> None:
    # Last in this module: measured after the walkthrough above ran through the operator and the agent.
    if not MEMORY_CGROUP.is_dir():
        pytest.skip(cannot_run("no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory"))
    figures = []
    for pod in real_cluster.product_pods():
        name = pod["metadata"]["labels"]["app.kubernetes.io/name"]
        limit_manifest = pod["spec"]["containers"][0]["resources"]["limits"]["memory"]
        cgroup = _memory_cgroup(pod)
        stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
        rss = int(stat["rss"]) + int(stat.get("rss_huge", 0))
        peak = int((cgroup / "memory.max_usage_in_bytes").read_text())
        limit = int((cgroup / "memory.limit_in_bytes").read_text())
        assert limit == int(limit_manifest.removesuffix("Mi")) * 2**20  # the kubelet applied the manifest's limit
        assert 0 < rss < peak <= limit, (name, rss, peak, limit)
        figures.append(f"{pod['metadata']['name']}: rss {rss / 2**20:.1f} MiB, peak (incl. page cache) "
                       f"{peak / 2**20:.1f} MiB, limit {limit / 2**20:.0f} MiB")
    report_figure("; ".join(figures))
