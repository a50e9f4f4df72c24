"""Fixtures for integration tests against a real local control plane.

``devcluster`` (session scope) starts etcd + kube-apiserver + kube-controller-manager
(``devtools.cluster``) once per test session; ``devcluster.admin`` is an admin client for it.
Mark tests that use them with ``@pytest.mark.controlplane``.

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

from devtools.build import BuildError, ensure_binary
from devtools.cluster import DevCluster, DevClusterError
from devtools.objects import create_if_missing, install_crds, service_account_kubeconfig
from secprofiles.resources import resource_path

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
        except BuildError as exc:
            session.config.stash[_BUILD_RESULT] = exc


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[DevCluster]:
    """A running dev cluster shared by the whole session (stopped at the end)."""
    built = pytestconfig.stash.get(_BUILD_RESULT, None)
    if isinstance(built, BaseException):
        pytest.fail(f"building the control plane failed: {built}", pytrace=False)
    try:
        binary = built if built is not None else ensure_binary()
    except BuildError as exc:
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
    """The dev cluster with this repository's CRDs installed, Established and served."""
    devcluster.admin.call(install_crds)
    return devcluster


@pytest.fixture(scope="module")
def agent_kubeconfig(cluster: DevCluster) -> Path:
    """A service account holding exactly the agent's RBAC (proves the list of API calls in the README)."""
    admin = cluster.admin
    for path, body in ((resource_path("ClusterRole"), {"metadata": {"name": "secprofiles-agent"}, "rules": AGENT_RULES}),
                       (resource_path("ClusterRoleBinding"), {
                           "metadata": {"name": "secprofiles-agent"},
                           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                       "name": "secprofiles-agent"},
                           "subjects": [{"kind": "ServiceAccount", "name": "secprofiles-agent",
                                         "namespace": "secprofiles-system"}]})):
        admin.call(create_if_missing, path, body)
    return admin.call(service_account_kubeconfig, cluster, "secprofiles-system", "secprofiles-agent").kubeconfig
