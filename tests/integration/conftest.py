"""Fixtures for integration tests against a real local control plane.

``devcluster`` (session scope) starts etcd + kube-apiserver + kube-controller-manager
from ``tools/controlplane`` once per test session; ``kube_api`` is an admin
``kubernetes.client.ApiClient`` for it.  Mark tests that use them with
``@pytest.mark.controlplane``.

The binary is built (or found in the cache) right after collection when a
selected test is marked ``controlplane``, so the first, slow build does not count
against a test's timeout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from secprofiles.devcluster import ApiError, DevCluster, DevClusterError, ensure_binary
from secprofiles.devcluster_clients import service_account_kubeconfig
from tests.integration.kube import REPO, eventually

GROUP = "/apis/secprofiles.io/v1alpha1"
AGENT_RULES = [
    {"apiGroups": ["secprofiles.io"], "resources": ["seccompprofiles", "apparmorprofiles"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["secprofiles.io"], "resources": ["nodeprofilestatuses"], "verbs": ["get", "create"]},
    {"apiGroups": ["secprofiles.io"], "resources": ["nodeprofilestatuses/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
]
_BUILD_RESULT = pytest.StashKey[Any]()
_CLUSTER = pytest.StashKey[DevCluster]()


def _wants_controlplane(session: pytest.Session) -> bool:
    return any(item.get_closest_marker("controlplane") for item in session.items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control-plane binary before any test runs (outside per-test timeouts)."""
    if session.config.option.collectonly or not _wants_controlplane(session):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    # show the build's progress even though output is being captured
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        try:
            session.config.stash[_BUILD_RESULT] = ensure_binary()
        except DevClusterError as exc:
            session.config.stash[_BUILD_RESULT] = exc


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[DevCluster]:
    """A running dev cluster shared by the whole session (stopped at the end)."""
    built = pytestconfig.stash.get(_BUILD_RESULT, None)
    if isinstance(built, BaseException):
        pytest.fail(f"building the control plane failed: {built}", pytrace=False)
    try:
        binary = built if built is not None else ensure_binary()
    except DevClusterError as exc:
        pytest.fail(f"building the control plane failed: {exc}", pytrace=False)
    # A short stop grace: this kube-apiserver never finishes its SIGTERM shutdown (it stalls after the quota
    # evaluators stop), so the default grace only adds its full length to every session; the data is thrown away.
    cluster = DevCluster(tmp_path_factory.mktemp("devcluster"), binary=binary, stop_grace=2.0)
    try:
        cluster.start()
    except DevClusterError as exc:
        pytest.fail(f"control plane did not start: {exc}", pytrace=False)
    pytestconfig.stash[_CLUSTER] = cluster
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kube_api(devcluster: DevCluster) -> Iterator[Any]:
    """An admin ``kubernetes.client.ApiClient`` for the dev cluster."""
    from secprofiles.devcluster_clients import api_client

    client = api_client(devcluster.kubeconfig)
    try:
        yield client
    finally:
        client.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the control-plane log tails to the report of a failed controlplane test."""
    report = yield
    if report.failed and item.get_closest_marker("controlplane"):
        cluster = item.config.stash.get(_CLUSTER, None)
        if cluster is not None:
            report.sections.append(("devcluster log tails", cluster.log_tails()))
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Report the control plane's start-up time and peak memory."""
    cluster = config.stash.get(_CLUSTER, None)
    if cluster is None:
        return
    line = (
        f"devcluster {cluster.version}: ready in {cluster.startup_seconds:.1f}s"
        f" (apiserver /readyz after {cluster.apiserver_ready_seconds:.1f}s)"
    )
    if cluster.peak_rss_bytes:
        per = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in cluster.peak_rss_by_process.items())
        line += f", peak RSS {cluster.peak_rss_bytes / 2**20:.0f} MiB ({per})"
    line += f"; run dir {cluster.run_dir}"
    terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def cluster(devcluster: DevCluster) -> DevCluster:
    """The dev cluster with this repository's CRDs installed and Established."""
    for path in sorted((REPO / "crds").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        try:
            devcluster.api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)
        except ApiError as error:
            if error.status != 409:
                raise

        def established(name: str = doc["metadata"]["name"]) -> bool:
            crd = devcluster.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            return any(c["type"] == "Established" and c["status"] == "True"
                       for c in (crd.get("status") or {}).get("conditions") or [])

        eventually(established, what=f"CRD {path.name} Established")
    eventually(lambda: devcluster.get(f"{GROUP}/seccompprofiles") is not None, what="CRDs served")
    return devcluster


@pytest.fixture(scope="module")
def agent_kubeconfig(cluster: DevCluster) -> Path:
    """A service account holding exactly the agent's RBAC (proves the list of API calls in the README)."""
    cluster.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                {"metadata": {"name": "secprofiles-agent"}, "rules": AGENT_RULES}, ok=(201, 409))
    cluster.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "metadata": {"name": "secprofiles-agent"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "secprofiles-agent"},
        "subjects": [{"kind": "ServiceAccount", "name": "secprofiles-agent", "namespace": "secprofiles-system"}]},
        ok=(201, 409))
    return service_account_kubeconfig(cluster, "secprofiles-system", "secprofiles-agent").kubeconfig
