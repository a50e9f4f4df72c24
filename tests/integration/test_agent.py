"""The node agent against the real local control plane: simulated nodes are agent subprocesses, each with its
own host root under tmp_path. AppArmor kernel loading is SIMULATED (``--apparmor-loader recording``): this
kernel has no AppArmor; the recording loader compiles with apparmor_parser and records in the host root."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster import DevCluster
from devtools.objects import create_node, ensure_namespace
from devtools.waiting import eventually
from secprofiles.model.evaluate import evaluate_sync
from secprofiles.resources import collection_path, resource_path
from tests.integration.kube import cluster_renderings, node_has, node_report
from tests.integration.processes import SECURITYFS, AgentProcess
from tests.reports import bucket_holds
from tests.runtime.conftest import Runner, podman  # noqa: F401 - the fixture, reused

pytestmark = pytest.mark.controlplane
TAINT = {"key": "secprofiles.io/not-ready", "effect": "NoSchedule"}


@pytest.fixture
def agents(cluster: DevCluster, agent_kubeconfig: Path, tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Make simulated nodes (Node object + agent process); all are stopped and deleted afterwards."""
    made: list[AgentProcess] = []

    def make(apparmor: bool = False, taints: tuple[dict[str, str], ...] = (), start: bool = True) -> AgentProcess:
        node = f"node-{uuid.uuid4().hex[:8]}"
        cluster.admin.call(create_node, node, taints=taints)
        agent = AgentProcess(agent_kubeconfig, node, tmp_path / node, apparmor)
        made.append(agent)
        return agent.start() if start else agent

    yield make
    for agent in made:
        agent.stop()
        cluster.admin.delete(resource_path("Node", name=agent.node))


@pytest.fixture
def namespace(cluster: DevCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.admin.call(ensure_namespace, name)
    yield name
    cluster.admin.delete(resource_path("Namespace", name=name))
    # Gone before the next test: agents watch cluster-wide, and a namespace still emptying (1,000 profiles in the
    # RSS test) would put its files on the next test's nodes.
    eventually(lambda: cluster.admin.get(resource_path("Namespace", name=name)) is None, timeout=120,
               what=f"namespace {name} deleted")


def seccomp_profile(namespace: str, name: str, syscalls: list[str] | None = None,
                    base: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW",
                            "syscalls": [{"names": syscalls or ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}
    if base:
        spec["baseProfileName"] = base
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def create(cluster: DevCluster, obj: dict[str, Any]) -> dict[str, Any]:
    return cluster.admin.create(collection_path(obj), obj)


def rendered(obj: dict[str, Any]) -> Any:
    outcome = evaluate_sync(obj)
    assert outcome.rendered is not None, outcome.findings
    return outcome.rendered


def node_status(cluster: DevCluster, node: str) -> dict[str, Any]:
    return node_report(cluster.admin, node)


def test_profiles_install_update_atomically_and_delete_on_every_node(
        cluster: DevCluster, agents: Callable[..., AgentProcess], namespace: str) -> None:
    nodes = [agents(), agents(apparmor=True)]
    obj = seccomp_profile(namespace, "prevent-chmod")
    create(cluster, obj)
    expected = rendered(obj)
    for agent in nodes:
        eventually(lambda a=agent: a.file(namespace, "prevent-chmod").read_bytes() == expected.content,
                   what=f"file on {agent.node}")
        eventually(lambda a=agent: node_has(cluster.admin, a.node, f"seccomp/{namespace}/prevent-chmod",
                                            expected.content_hash), what="processed in the node's report")
        status = node_status(cluster, agent.node)
        assert status["ready"] is True and status["seccompAvailable"] is True and status["agentVersion"]
        assert agent.file(namespace, "prevent-chmod").stat().st_mode & 0o777 == 0o644
        assert agent.http("/healthz") == 200 and agent.http("/readyz") == 200

    # Updates: a reader thread parses the file continuously; it must never see a partial file.
    path = nodes[0].file(namespace, "prevent-chmod")
    seen: list[str] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.append(json.loads(path.read_bytes())["syscalls"][0]["names"][0])
            except Exception as error:
                errors.append(error)

    reader = threading.Thread(target=watch)
    reader.start()
    item = resource_path("SeccompProfile", namespace, "prevent-chmod")
    try:
        for i, names in enumerate([["mkdir"], ["chmod"], ["rmdir"], ["chown"]] * 3):
            current = cluster.admin.request("GET", item)
            current["spec"]["syscalls"][0]["names"] = names
            cluster.admin.request("PUT", item, current)
            last = rendered(seccomp_profile(namespace, "prevent-chmod", names))
            if i % 4 == 3:
                eventually(lambda r=last: path.read_bytes() == r.content, what="update applied")
        eventually(lambda: path.read_bytes() == last.content, what="last update applied")
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[:3]
    assert len(set(seen)) >= 2
    for agent in nodes:
        eventually(lambda a=agent: node_has(cluster.admin, a.node, f"seccomp/{namespace}/prevent-chmod",
                                            last.content_hash), what="updated hash in the node's report")

    cluster.admin.request("DELETE", item)
    for agent in nodes:
        eventually(lambda a=agent: not a.file(namespace, "prevent-chmod").exists(), what="file removed")
        eventually(lambda a=agent: node_has(cluster.admin, a.node, f"seccomp/{namespace}/prevent-chmod", None),
                   what="gone from the node's report")


def test_apparmor_is_an_error_without_apparmor_and_installed_with_simulated_apparmor(
        cluster: DevCluster, agents: Callable[..., AgentProcess], namespace: str) -> None:
    without, with_apparmor = agents(), agents(apparmor=True)
    name = f"aa-{uuid.uuid4().hex[:6]}"
    profile = {"apiVersion": "secprofiles.io/v1alpha1", "kind": "AppArmorProfile", "metadata": {"name": name},
               "spec": {"mode": "enforce", "rules": {"filesystem": {"readOnlyPaths": ["/etc/**"]}}}}
    create(cluster, profile)
    create(cluster, seccomp_profile(namespace, "alongside"))
    try:
        expected = rendered(profile)
        # Processed there too (in its digest), failed for them all: appArmorEnabled false says it, unlisted.
        eventually(lambda: node_has(cluster.admin, without.node, f"apparmor/{name}", expected.content_hash),
                   what="processed on the node without AppArmor")
        alongside = rendered(seccomp_profile(namespace, "alongside"))
        eventually(lambda: node_has(cluster.admin, without.node, f"seccomp/{namespace}/alongside",
                                    alongside.content_hash), what="the seccomp profile alongside")
        assert node_status(cluster, without.node)["appArmorEnabled"] is False

        eventually(lambda: node_has(cluster.admin, with_apparmor.node, f"apparmor/{name}", expected.content_hash),
                   what="Installed with simulated AppArmor")
        assert node_status(cluster, with_apparmor.node)["appArmorEnabled"] is True
        kernel = (with_apparmor.host_root / SECURITYFS / "profiles").read_text()
        assert f"{name} (enforce)" in kernel
        assert (with_apparmor.state_dir / "apparmor" / f"{name}.apparmor").read_bytes() == expected.content
    finally:
        cluster.admin.request("DELETE", resource_path("AppArmorProfile", name=name))
    eventually(lambda: f"{name} (" not in (with_apparmor.host_root / SECURITYFS / "profiles").read_text(),
               what="simulated unload")


def test_taint_is_removed_only_after_the_files_exist(
        cluster: DevCluster, agents: Callable[..., AgentProcess], namespace: str) -> None:
    objs = [seccomp_profile(namespace, f"p{i}") for i in range(20)]
    for obj in objs:
        create(cluster, obj)
    agent = agents(taints=(TAINT,), start=False)
    node_path = f"/api/v1/nodes/{agent.node}"
    files = [agent.file(namespace, f"p{i}") for i in range(20)]
    assert cluster.admin.request("GET", node_path)["spec"]["taints"][0]["key"] == TAINT["key"]
    assert not any(path.exists() for path in files)

    def missing_when_untainted() -> list[str]:
        """The files missing right after the first read that shows the taint gone.

        The files are looked at only after that read, with no wait in between, and the agent never deletes them:
        an agent that writes them first always passes; one that removes the taint first fails unless it wrote all
        of them before this poll (every 20 ms) got there."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            taints = cluster.admin.request("GET", node_path)["spec"].get("taints") or []
            if not any(t["key"] == TAINT["key"] for t in taints):
                return [path.name for path in files if not path.exists()]
            time.sleep(0.02)
        raise AssertionError("taint never removed")

    # Polling starts before the agent: agent.start() returns only once it serves, which may be after it synced,
    # and the first read without the taint must follow the removal closely.
    with ThreadPoolExecutor(max_workers=1) as poller:
        missing = poller.submit(missing_when_untainted)
        agent.start()
        assert missing.result() == [], "the taint was gone before these files existed"
    eventually(lambda: node_status(cluster, agent.node)["ready"] is True, what="ready reported")
    assert agent.http("/readyz") == 200


def test_stale_files_from_an_earlier_run_are_cleaned_up_on_start(
        cluster: DevCluster, agents: Callable[..., AgentProcess], namespace: str) -> None:
    create(cluster, seccomp_profile(namespace, "current"))
    agent = agents(start=False)
    stale = agent.file("gone-namespace", "old")
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    crash_leftover = agent.file(namespace, "current").parent / ".tmp-current.json.deadbeef"
    crash_leftover.parent.mkdir(parents=True)
    crash_leftover.write_text('{"partial')
    theirs = agent.host_root / "var/lib/kubelet/seccomp/not-ours.json"
    theirs.write_text("{}")
    agent.start()
    eventually(lambda: agent.http("/readyz") == 200, what="ready")
    assert agent.file(namespace, "current").exists()
    assert not stale.exists() and not stale.parent.exists() and not crash_leftover.exists()
    assert theirs.read_text() == "{}"


def test_kill_9_mid_sync_then_restart_converges_without_partial_files(
        cluster: DevCluster, agents: Callable[..., AgentProcess], namespace: str) -> None:
    count = 300
    objs = [seccomp_profile(namespace, f"p{i:03}", syscalls=["chmod", "mkdir"] if i % 2 else None)
            for i in range(count)]
    for obj in objs:
        create(cluster, obj)
    expected = {obj["metadata"]["name"]: rendered(obj) for obj in objs}
    agent = agents()
    directory = agent.seccomp_root / namespace
    eventually(lambda: directory.is_dir() and len(os.listdir(directory)) >= 20, timeout=60, what="sync under way")
    agent.kill()
    written = [p for p in directory.iterdir() if not p.name.startswith(".tmp-")]
    assert len(written) > 0, "killed before anything was written"
    for path in written:  # every final path holds a complete, exact rendering
        assert path.read_bytes() == expected[path.name.removesuffix(".json")].content
    print(f"\nkill -9 after {len(written)}/{count} files")

    started = time.monotonic()
    agent.start()
    eventually(lambda: agent.http("/readyz") == 200, timeout=120, what="ready after restart")
    print(f"restart converged {count} profiles in {time.monotonic() - started:.1f}s")
    assert sorted(os.listdir(directory)) == sorted(f"{name}.json" for name in expected)
    status = node_status(cluster, agent.node)
    processed = cluster.admin.call(cluster_renderings)
    for name, render in expected.items():
        key = f"seccomp/{namespace}/{name}"
        assert agent.file(namespace, name).read_bytes() == render.content
        assert processed[key] == render.content_hash and bucket_holds(status, processed, key)
    assert not status.get("failures")


def test_agent_written_file_is_enforced_by_podman_and_runc(
        cluster: DevCluster, agents: Callable[..., AgentProcess], namespace: str, podman: Runner) -> None:  # noqa: F811
    create(cluster, seccomp_profile(namespace, "prevent-chmod"))
    agent = agents()
    path = agent.file(namespace, "prevent-chmod")
    eventually(path.exists, what="profile file")
    result = podman("touch /tmp/f && chmod 600 /tmp/f; echo rc=$?", seccomp=path)
    assert result.stdout.strip() == "rc=1"
    assert "Operation not permitted" in result.stderr
    assert podman("touch /tmp/f && chmod 600 /tmp/f; echo rc=$?").stdout.strip() == "rc=0"


def test_rss_with_100_and_1000_profiles(
        cluster: DevCluster, agents: Callable[..., AgentProcess], namespace: str) -> None:
    agent = agents()
    figures = []
    for target in (100, 1000):
        have = len(os.listdir(agent.seccomp_root / namespace)) if (agent.seccomp_root / namespace).exists() else 0
        started = time.monotonic()
        for i in range(have, target):
            create(cluster, seccomp_profile(namespace, f"p{i:04}", syscalls=["chmod", "mkdir", "rmdir"][: 1 + i % 3]))
        created = time.monotonic()
        eventually(lambda t=target: node_status(cluster, agent.node).get("summary", {}).get("installed", 0) >= t,
                   timeout=300, what=f"{target} installed")
        done = time.monotonic()
        memory = agent.memory()
        figures.append((target, memory, created - started, done - created))
        print(f"\nagent with {target} seccomp profiles: VmRSS {memory['VmRSS'] / 1024:.1f} MiB, "
              f"VmHWM {memory['VmHWM'] / 1024:.1f} MiB (creating took {created - started:.1f}s, "
              f"status caught up {done - created:.1f}s later)")
    assert figures[-1][1]["VmHWM"] < 64 * 1024, figures
    # Restart with 1000 in place: a full resync from scratch.
    agent.stop()
    started = time.monotonic()
    agent.start()
    eventually(lambda: agent.http("/readyz") == 200, timeout=300, what="ready after restart")
    memory = agent.memory()
    print(f"restart with 1000 profiles: ready in {time.monotonic() - started:.1f}s, "
          f"VmRSS {memory['VmRSS'] / 1024:.1f} MiB, VmHWM {memory['VmHWM'] / 1024:.1f} MiB")
    assert memory["VmHWM"] < 64 * 1024

    # A new node joining a cluster that has 1000 profiles: nothing on disk yet.
    fresh = agents(start=False)
    started = time.monotonic()
    fresh.start()
    eventually(lambda: fresh.http("/readyz") == 200, timeout=300, what="new node ready")
    memory = fresh.memory()
    print(f"new node with 1000 profiles to write: ready in {time.monotonic() - started:.1f}s, "
          f"VmHWM {memory['VmHWM'] / 1024:.1f} MiB")
    assert len(os.listdir(fresh.seccomp_root / namespace)) == 1000
    assert memory["VmHWM"] < 64 * 1024
