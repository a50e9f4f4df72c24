"""Faults on the real node, and the readiness gate for real.

* The kubelet is stopped, its Node deleted and the seccomp files wiped (a new node: empty disk), the kubelet started
  again: it registers the Node with the ``secprofiles.io/not-ready`` taint. A pod that needs a profile stays
  Pending (the real scheduler will not place it) until the agent, whose DaemonSet pod is then deleted and recreated,
  has synced and removed the taint; then it runs and fails with EPERM - never ``CreateContainerError``.
* The agent pod deleted: the DaemonSet recreates it; no partial file is ever seen.
* An operator pod deleted while profiles change: every profile still reaches Installed.
* An image that is not on the node: the new pod's status names it (``ErrImageNeverPull``) while the old replicas
  keep serving.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from devtools import images
from devtools.realcluster import NODE_NAME, OPERATOR, PRODUCT_NAMESPACE, RealCluster
from devtools.waiting import eventually
from secprofiles.resources import resource_path
from tests.realnode.conftest import Kube, agent_pod, chmod_pod, profile_document

pytestmark = pytest.mark.realnode
TAINT_KEY = "secprofiles.io/not-ready"


def _taints(kube: Kube) -> list[str]:
    node = kube.get("Node", NODE_NAME) or {}
    return [t["key"] for t in (node.get("spec") or {}).get("taints") or []]


def test_readiness_gate_a_new_node_takes_no_profile_pod_before_its_agent_synced(
        kube: Kube, real_cluster: RealCluster, report_figure: Callable[[str], None]) -> None:
    namespace = kube.namespace("gate")
    kube.apply(profile_document("seccomp/prevent-chmod.yaml", namespace))
    profile = kube.wait_phase("SeccompProfile", "prevent-chmod", namespace, "Installed")
    node = real_cluster.node
    assert node is not None
    # The kubelet stops; the Node is deleted; the seccomp files are gone: what a new node looks like.
    node.kubelet.stop(grace=30)
    kube.cluster.cluster.admin.delete(resource_path("Node", name=NODE_NAME))
    eventually(lambda: kube.get("Node", NODE_NAME) is None, 30, "Node deleted")
    shutil.rmtree(real_cluster.files.seccomp_dir)
    node.kubelet.start()
    eventually(lambda: TAINT_KEY in _taints(kube), 60, "the kubelet registered the Node with the taint")
    real_cluster.wait_node_ready()
    # Ready, so the node lifecycle's not-ready taint is gone: ours is the only one left to keep pods off.
    eventually(lambda: _taints(kube) == [TAINT_KEY], 60, f"{TAINT_KEY} the Node's only taint")
    old_agent = agent_pod(kube)
    kube.apply(chmod_pod("gated", namespace, profile["status"]["localhostProfile"]))
    timeline: list[tuple[float, str]] = []
    started = time.monotonic()

    def watch() -> None:
        last = ""
        while time.monotonic() - started < 150:
            pod = kube.get("Pod", "gated", namespace) or {}
            status = pod.get("status") or {}
            waiting = [((c.get("state") or {}).get("waiting") or {}).get("reason", "")
                       for c in status.get("containerStatuses") or []]
            state = f"{status.get('phase')} node={pod.get('spec', {}).get('nodeName')} {' '.join(filter(None, waiting))}"
            if state != last:
                timeline.append((time.monotonic() - started, state.strip()))
                last = state
            if status.get("phase") in ("Succeeded", "Failed"):
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(5)  # the taint holds the pod while the agent has not synced (the old agent never re-syncs)
    pending = kube.get("Pod", "gated", namespace) or {}
    assert pending["status"]["phase"] == "Pending" and not pending["spec"].get("nodeName"), pending["status"]
    unschedulable = [c for c in pending["status"].get("conditions") or [] if c["type"] == "PodScheduled"]
    assert unschedulable and "untolerated taint" in unschedulable[0].get("message", ""), unschedulable
    assert _taints(kube) == [TAINT_KEY]
    assert not os.path.exists(real_cluster.files.seccomp_dir / namespace / "prevent-chmod.json")
    kube.cluster.cluster.admin.delete(resource_path("Pod", namespace=PRODUCT_NAMESPACE,
                                                    name=old_agent["metadata"]["name"]))
    watcher.join()
    final = kube.get("Pod", "gated", namespace) or {}
    assert final["status"]["phase"] == "Failed", timeline
    assert "Operation not permitted" in kube.logs("gated", namespace)
    reasons = {e.get("reason") for e in kube.pod_events("gated", namespace)}
    assert "Failed" not in reasons and not any("CreateContainerError" in state for _, state in timeline), timeline
    assert TAINT_KEY not in _taints(kube)
    try:
        kube.wait_phase("SeccompProfile", "prevent-chmod", namespace, "Installed")
    except TimeoutError as error:
        report = kube.get("NodeProfileStatus", NODE_NAME) or {}
        raise AssertionError(
            f"Node uid {(kube.get('Node', NODE_NAME) or {}).get('metadata', {}).get('uid')}; NodeProfileStatus "
            f"{report.get('metadata', {}).get('ownerReferences')}, "
            f"status {str(report.get('status'))[:300]}; {error}; profile status "
            f"{(kube.get('SeccompProfile', 'prevent-chmod', namespace) or {}).get('status')}") from None
    real_cluster.wait_product_ready()
    report_figure("readiness gate timeline (s after the pod's create): "
                  + "; ".join(f"{t:.1f} {s}" for t, s in timeline) + f"; events: {sorted(filter(None, reasons))}")


def _assert_no_partial_files(directory: os.PathLike[str], seen: list[str]) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if name.startswith(".tmp-"):
                continue  # a temp file is never at a final path
            try:
                data = open(path, "rb").read()  # noqa: SIM115
            except FileNotFoundError:
                continue
            if data and not data.rstrip().endswith(b"}"):
                seen.append(path)


def test_agent_pod_deleted_is_recreated_and_no_partial_file_is_seen(
        kube: Kube, real_cluster: RealCluster, report_figure: Callable[[str], None]) -> None:
    namespace = kube.namespace("agentfault")
    names = [f"p{i}" for i in range(10)]
    for name in names[:5]:
        kube.apply(profile_document("seccomp/prevent-chmod.yaml", namespace, name))
    old = agent_pod(kube)
    partial: list[str] = []
    stop = threading.Event()

    def scan() -> None:
        while not stop.is_set():
            _assert_no_partial_files(real_cluster.files.seccomp_dir, partial)

    scanner = threading.Thread(target=scan)
    scanner.start()
    started = time.monotonic()
    try:
        real_cluster.cluster.admin.delete(resource_path("Pod", namespace=PRODUCT_NAMESPACE,
                                                        name=old["metadata"]["name"]))
        for name in names[5:]:
            kube.apply(profile_document("seccomp/prevent-chmod.yaml", namespace, name))
        new = eventually(lambda: (p := agent_pod(kube))["metadata"]["uid"] != old["metadata"]["uid"] and p, 120,
                         "a new agent pod")
        real_cluster.wait_product_ready()
        recreated = time.monotonic() - started
        for name in names:
            profile = kube.wait_phase("SeccompProfile", name, namespace, "Installed", timeout=90)
            data = (real_cluster.files.seccomp_dir / namespace / f"{name}.json").read_bytes()
            assert f"sha256:{hashlib.sha256(data).hexdigest()}" == profile["status"]["contentHash"]
    finally:
        stop.set()
        scanner.join()
    assert not partial, partial
    report_figure(f"agent pod {old['metadata']['name']} deleted -> {new['metadata']['name']} Ready and all "
                  f"{len(names)} profiles Installed with matching bytes in {recreated:.1f}s; 0 partial files seen")


def test_operator_pod_deleted_while_profiles_change(kube: Kube, real_cluster: RealCluster,
                                                    report_figure: Callable[[str], None]) -> None:
    namespace = kube.namespace("operatorfault")
    lease = kube.get("Lease", "secprofiles-operator", PRODUCT_NAMESPACE) or {}
    leader = lease["spec"]["holderIdentity"]
    names = [f"q{i}" for i in range(12)]
    started = time.monotonic()
    for index, name in enumerate(names):
        kube.apply(profile_document("seccomp/prevent-chmod.yaml", namespace, name))
        if index == 4:
            real_cluster.cluster.admin.delete(resource_path("Pod", namespace=PRODUCT_NAMESPACE, name=leader))
    for name in names:
        kube.wait_phase("SeccompProfile", name, namespace, "Installed", timeout=90)
    settled = time.monotonic() - started
    new_leader = (kube.get("Lease", "secprofiles-operator", PRODUCT_NAMESPACE) or {})["spec"]["holderIdentity"]
    assert new_leader != leader
    real_cluster.wait_product_ready()
    report_figure(f"leader {leader} deleted after 5 of {len(names)} profiles; all Installed {settled:.1f}s after "
                  f"the first create; new leader {new_leader}")


def test_a_missing_image_is_named_in_the_pod_status_while_the_old_replicas_serve(
        kube: Kube, real_cluster: RealCluster, report_figure: Callable[[str], None]) -> None:
    missing = images.OPERATOR_IMAGE.rsplit(":", 1)[0] + ":not-imported"
    kube.kubectl("set", "image", "-n", PRODUCT_NAMESPACE, f"deployment/{OPERATOR}", f"operator={missing}")
    try:
        def waiting() -> dict[str, Any] | None:
            listed = real_cluster.cluster.admin.request(
                "GET", resource_path("Pod", namespace=PRODUCT_NAMESPACE),
                params={"labelSelector": f"app.kubernetes.io/name={OPERATOR}"})
            for pod in listed.get("items") or []:
                for status in (pod.get("status") or {}).get("containerStatuses") or []:
                    state = (status.get("state") or {}).get("waiting") or {}
                    if state.get("reason") == "ErrImageNeverPull":
                        return dict(state)
            return None

        state = eventually(waiting, 90, "a pod waiting with ErrImageNeverPull")
        assert missing in state["message"], state
        ready = [p for p in real_cluster.product_pods()
                 if p["metadata"]["labels"].get("app.kubernetes.io/name") == OPERATOR
                 and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
        assert len(ready) == 2  # maxUnavailable 0: the old replicas keep serving
    finally:
        kube.kubectl("rollout", "undo", "-n", PRODUCT_NAMESPACE, f"deployment/{OPERATOR}")
        kube.kubectl("rollout", "status", "-n", PRODUCT_NAMESPACE, f"deployment/{OPERATOR}", "--timeout=180s")
        real_cluster.wait_product_ready()
    report_figure(f"missing image: {state['reason']}: {state['message']}")

