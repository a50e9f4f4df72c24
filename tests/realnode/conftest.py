"""Fixtures for the real node (``@pytest.mark.realnode``): one ``RealCluster`` for the package - control plane,
containerd, kubelet, kube-proxy - with secprofiles installed by ``kubectl apply --server-side -k`` of the generated
overlay, the images built here (``devtools.images``; podman's cache makes that cheap after the first time).

Without root, containerd or the CNI plugins the tests skip with ``missing_install``; when another real node holds
the machine, with ``cannot_run`` (strict mode, ``make test``, turns both into failures). After the package's last
test the node is stopped (the rest of the suite runs without it) and the machine compared with its state before: a
difference that is the node's fails the fixture's teardown.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import images
from devtools.build import BuildError, ensure_binary
from devtools.realcluster import RealCluster
from devtools.realnode import RealNodeUnavailableError, prerequisites
from devtools.waiting import eventually
from secprofiles.resources import resource_path
from tests.conftest import REPO, cannot_run, missing_install, record_figure

_CLUSTER = pytest.StashKey[RealCluster]()


@pytest.fixture(scope="package")
def real_cluster(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config,
                 report_session_figure: Callable[[str], None]) -> Iterator[RealCluster]:
    """The real node with the product installed, shared by the package's tests."""
    missing = prerequisites()
    if missing:
        pytest.skip(missing_install("a real node needs " + "; ".join(missing)))
    try:
        binary = ensure_binary()
        built = images.build_all()
    except (BuildError, images.ImageBuildError) as error:
        pytest.fail(f"building the binary or the images failed: {error}", pytrace=False)
    report_session_figure("images built or found in "
                          + ", ".join(f"{k} {v:.1f}s" for k, v in built.seconds.items()) + f" (base {built.base})")
    cluster = RealCluster(Path(tmp_path_factory.mktemp("real")), binary=binary)
    try:
        cluster.start()
    except RealNodeUnavailableError as error:
        pytest.skip(cannot_run(str(error)))
    pytestconfig.stash[_CLUSTER] = cluster
    try:
        seconds = cluster.install()
        report_session_figure(f"real cluster: start {cluster.timings['start']:.1f}s, apply -k -> all product pods "
                              f"Ready {seconds:.1f}s; " + ", ".join(f"{k} {v:.1f}s" for k, v in
                                                                   cluster.timings.items()))
        yield cluster
    finally:
        leftovers = cluster.stop()
        report_session_figure("after the stop the machine equals its snapshot before the start"
                              if not leftovers else "LEFTOVERS: " + "; ".join(str(d) for d in leftovers))
        assert not leftovers, "the real node left traces on the machine:\n" + "\n".join(str(d) for d in leftovers)


@pytest.fixture(scope="session")
def report_session_figure(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Like ``report_figure``, for session fixtures."""
    return lambda text: record_figure(pytestconfig, "tests/realnode (session)", text)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the node's log tails to a failed real-node test."""
    report = yield
    cluster = item.config.stash.get(_CLUSTER, None)
    if report.failed and cluster is not None and item.get_closest_marker("realnode"):
        logs = cluster.directory / "logs"
        for name in ("kubelet", "containerd"):
            log = logs / f"{name}.log"
            if log.exists():
                report.sections.append((f"{name} log tail", "\n".join(log.read_text(errors="replace")
                                                                      .splitlines()[-30:])))
    return report


# --------------------------------------------------------------------------- helpers the tests share


@dataclass
class Kube:
    """What the walkthrough does, the way a user does it: kubectl (the cluster's release) and the API."""

    cluster: RealCluster

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        """kubectl's stdout."""
        return self.cluster.kubectl(*args, check=check, input_text=stdin).stdout

    def apply(self, *objects: dict[str, Any]) -> None:
        """``kubectl apply --server-side -f -``."""
        self.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(objects))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None."""
        return self.cluster.cluster.admin.get(resource_path(kind, namespace=namespace, name=name))

    def delete(self, kind: str, name: str, namespace: str | None = None, wait: float = 60.0) -> None:
        """Delete and wait until it is gone."""
        self.cluster.cluster.admin.delete(resource_path(kind, namespace=namespace, name=name))
        eventually(lambda: self.get(kind, name, namespace) is None, wait, f"{kind} {namespace}/{name} gone")

    def namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        """Create (or update) a namespace."""
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}})
        eventually(lambda: self.get("ServiceAccount", "default", name), 30, f"default ServiceAccount in {name}")
        return name

    def profile_phase(self, kind: str, name: str, namespace: str | None = None) -> str:
        """A profile's ``status.phase`` ('' before the operator wrote it)."""
        obj = self.get(kind, name, namespace) or {}
        return str((obj.get("status") or {}).get("phase") or "")

    def wait_phase(self, kind: str, name: str, namespace: str | None, phase: str, timeout: float = 60) -> dict[str, Any]:
        """Until a profile's phase is ``phase``; the object."""
        def reached() -> dict[str, Any] | None:
            obj = self.get(kind, name, namespace) or {}
            return obj if (obj.get("status") or {}).get("phase") == phase else None

        return eventually(reached, timeout, f"{kind} {namespace}/{name} {phase}", interval=0.1)

    def wait_pod_done(self, name: str, namespace: str, timeout: float = 120) -> dict[str, Any]:
        """Until the pod Succeeded or Failed; the pod."""
        def done() -> dict[str, Any] | None:
            pod = self.get("Pod", name, namespace) or {}
            return pod if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

        return eventually(done, timeout, f"pod {namespace}/{name} finished", interval=0.1)

    def logs(self, name: str, namespace: str) -> str:
        """``kubectl logs`` (the API server asks the kubelet)."""
        return self.kubectl("logs", "-n", namespace, name, check=False).strip()

    def pod_events(self, name: str, namespace: str) -> list[dict[str, Any]]:
        """Events about a pod."""
        listed = self.cluster.cluster.admin.request(
            "GET", resource_path("Event", namespace=namespace),
            params={"fieldSelector": f"involvedObject.name={name}"})
        return list(listed.get("items") or [])


@pytest.fixture(scope="package")
def kube(real_cluster: RealCluster) -> Kube:
    """kubectl and API helpers for the real cluster."""
    return Kube(real_cluster)


def chmod_pod(name: str, namespace: str, localhost_profile: str | None = None, *,
              command: list[str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The source document's pod: busybox running ``chmod 777 /etc/hostname``, with the Localhost profile."""
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": "chmod"}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "automountServiceAccountToken": False,
                 "containers": [{"name": "chmod", "image": images.BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                                 "command": command or ["chmod", "777", "/etc/hostname"]}]}}
    if localhost_profile is not None:
        pod["spec"]["securityContext"] = {"seccompProfile": {"type": "Localhost",
                                                             "localhostProfile": localhost_profile}}
    return pod


def profile_document(path: str, namespace: str | None = None, name: str | None = None) -> dict[str, Any]:
    """A profile of ``profiles/`` (the document's), placed in ``namespace``/renamed."""
    document: dict[str, Any] = yaml.safe_load((REPO / "profiles" / path).read_text())
    if namespace is not None:
        document["metadata"]["namespace"] = namespace
    if name is not None:
        document["metadata"]["name"] = name
    return document


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    """The first container's terminated state."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return dict((statuses[0].get("state") or {}).get("terminated") or {})


def token_claims(token: str) -> dict[str, Any]:
    """The payload of a service-account JWT (not verified: the API server does that)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def agent_pod(kube: Kube) -> dict[str, Any]:
    """The running agent pod."""
    def running() -> dict[str, Any] | None:
        listed = kube.cluster.cluster.admin.request("GET", resource_path("Pod", namespace="secprofiles-system"),
                                                    params={"labelSelector": "app.kubernetes.io/name=secprofiles-agent"})
        pods = [p for p in listed.get("items") or [] if not p["metadata"].get("deletionTimestamp")
                and (p.get("status") or {}).get("phase") == "Running"]
        return pods[0] if pods else None

    return eventually(running, 120, "a running agent pod")


def kubelet_token(cluster: RealCluster, pod: dict[str, Any]) -> str:
    """The service-account token the kubelet wrote into the pod's projected volume (requested by the kubelet)."""
    volume = (cluster.files.kubelet_root / "pods" / pod["metadata"]["uid"] / "volumes" / "kubernetes.io~projected"
              / "kube-api-access" / "token")
    return eventually(lambda: volume.read_text().strip(), 30, f"the kubelet's token file {volume}")

