"""ProfileRecording against the real control plane: the operator (``--recording``) serving the webhook, a real
agent for the node, and for the end-to-end proof a real node recorder and podman + runc.

The end-to-end test stands in for the kubelet (no kubelet node here yet): the Pod object is admitted by the
webhook for the simulated node, and podman runs its container with ``--cgroup-parent .../pod<uid>`` (the
kubelet's cgroup layout, which is how the recorder finds pods) under the logging profile the agent wrote; the
test then reports the container's id in the pod's status, as the kubelet does from the CRI. Everything else is
the product: the webhook, the operator's reports and profiles, the recorder's attribution and reports.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.busybox import EXPECTED_OUTPUT, FILES_AND_PROCESSES, NEW_SYSCALL_WORKLOADS
from devtools.cluster import DevCluster
from devtools.objects import create_node, delete_everything, install_crds
from devtools.waiting import wait_for
from secprofiles.cli import main as cli
from secprofiles.kube.client import ApiError, KubeApi
from secprofiles.recording.report import ContainerSyscalls, NodeReport, report_name
from secprofiles.resources import resource_path
from tests.conftest import cannot_run
from tests.integration.kube import open_api, webhook_config
from tests.integration.processes import AgentProcess, RecorderProcess, WebhookOperator
from tests.runtime.conftest import IMAGE, RUN, Runner, podman, recording_possible  # noqa: F401  (fixtures)

pytestmark = pytest.mark.controlplane
NS, NODE, CONFIG = "rec-team", "rec-node", "secprofiles-recording"
CGROUP_PARENT = "secprofiles-recording-test"  # not the kubelet's /kubepods: a real kubelet may run on this machine
# A pod's main process lives on while the recorder catches up (the recorder finds a container by its first process'
# cgroup while it lives; children come from fork events). A container whose whole life is shorter than the
# recorder's scheduling delay on a loaded machine can be missed: README, "Recording", limits.
POD_WORKLOAD = FILES_AND_PROCESSES + "sleep 2\n"
X86_64 = "SCMP_ARCH_X86_64"


@pytest.fixture(scope="module")
def processes(devcluster: DevCluster, agent_kubeconfig: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebhookOperator, AgentProcess]]:
    """The namespace, one node with its agent, the webhook registered for this namespace only, the operator."""
    admin = devcluster.admin
    for node in admin.request("GET", resource_path("Node"))["items"]:  # every node counts for "Installed"
        admin.delete(resource_path("Node", name=node["metadata"]["name"]))
    admin.call(install_crds)
    admin.call(create_node, NODE)
    admin.create(resource_path("Namespace"), {"metadata": {"name": NS, "labels": {"secprofiles.io/binding": "enabled"}}})
    directory = tmp_path_factory.mktemp("recording")
    operator = WebhookOperator(devcluster.kubeconfig, directory, config_name=CONFIG)
    config = webhook_config(operator.port)
    config["metadata"]["name"] = CONFIG
    for webhook in config["webhooks"]:  # this module's namespace only: other modules' webhooks stay theirs
        webhook["namespaceSelector"]["matchExpressions"].append(
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [NS]})
    admin.create(resource_path("MutatingWebhookConfiguration"), config)
    operator.start("--recording")
    agent = AgentProcess(agent_kubeconfig, NODE, directory / NODE).start()
    try:
        yield operator, agent
    finally:
        agent.stop()
        operator.stop()
        admin.delete(resource_path("MutatingWebhookConfiguration", name=CONFIG))
        in_namespace = {"fieldSelector": f"metadata.namespace={NS}"}  # finalizers of a stopped operator removed
        for kind in ("ProfileRecording", "SeccompProfile"):
            admin.call(delete_everything, kind, in_namespace)
        admin.delete(resource_path("Namespace", name=NS))
        admin.delete(resource_path("Node", name=NODE))


@pytest.fixture
async def api(devcluster: DevCluster, processes: tuple[WebhookOperator, AgentProcess]) -> AsyncIterator[KubeApi]:
    async with open_api(devcluster.kubeconfig) as client:
        yield client
    operator, _ = processes
    assert operator.running, operator.tail()


def recording(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "ProfileRecording",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"podSelector": {"matchLabels": {"app": name}}, **spec}}


def pod(name: str, app: str, node: str = NODE, **container: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "work", "image": "busybox", **container},
                                                      {"name": "side", "image": "busybox"}]}}


async def status(api: KubeApi, name: str, reason: str | None = None, phase: str | None = None,
                 ended: bool = False, check: Callable[[dict[str, Any]], bool] = bool) -> dict[str, Any]:
    """The recording's status once it has ``reason`` and ``phase`` (with ``ended``, its final one) and ``check``
    holds."""
    async def probe() -> dict[str, Any] | None:
        found = ((await api.get(resource_path("ProfileRecording", NS, name))) or {}).get("status") or {}
        return found if (reason is None or found.get("reason") == reason) and \
            (phase is None or found.get("phase") == phase) and (not ended or found.get("endTime")) and \
            check(found) else None

    return await wait_for(probe, within=60, what=f"ProfileRecording {name} {phase or ''} {reason or ''}")


async def recording_ready(api: KubeApi, name: str, **spec: Any) -> dict[str, Any]:
    """Create a recording and wait until its logging profile is Installed (new pods get recorded from then on)."""
    await api.create(resource_path("ProfileRecording", NS), recording(name, **spec))
    return await status(api, name, "NoMatchingPods")


async def kubelet_reports(api: KubeApi, name: str, containers: dict[str, str]) -> None:
    """What the kubelet writes into a pod's status: each container's id from the CRI."""
    await api.patch(resource_path("Pod", NS, name, "status"), {"status": {"phase": "Running", "containerStatuses": [
        {"name": cname, "containerID": f"containerd://{cid}", "image": "busybox", "imageID": "busybox", "ready": True,
         "restartCount": 0, "started": True, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
        for cname, cid in containers.items()]}})


async def report_of(api: KubeApi, name: str, node: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        found = await api.get(resource_path("RecordingReport", NS, report_name(name, node)))
        return found if found and check(found) else None

    return await wait_for(probe, within=60, what=f"RecordingReport {name} of {node}")


async def test_a_pod_with_its_own_localhost_profile_is_refused_naming_the_field(api: KubeApi) -> None:
    await recording_ready(api, "own")
    own = {"type": "Localhost", "localhostProfile": f"secprofiles/{NS}/mine.json"}
    with pytest.raises(ApiError) as refused:
        await api.create(resource_path("Pod", NS), pod("own-1", "own", securityContext={"seccompProfile": own}))
    assert refused.value.status == 403
    assert "spec.containers[0].securityContext.seccompProfile: ProfileRecording own records container work" in \
        refused.value.message
    created = await api.create(resource_path("Pod", NS), pod("own-2", "own"))  # without it: recorded
    assert created["spec"]["containers"][0]["securityContext"]["seccompProfile"] == {
        "type": "Localhost", "localhostProfile": f"secprofiles/{NS}/own.log.json"}
    assert created["metadata"]["annotations"]["secprofiles.io/recording"] == "own"
    assert (await status(api, "own", "Recording"))["pods"] == 1


async def test_ended_before_any_pod_ran_writes_nothing_and_says_why(api: KubeApi) -> None:
    await recording_ready(api, "early")
    await api.patch(resource_path("ProfileRecording", NS, "early"), {"spec": {"stop": True}})
    final = await status(api, "early", phase="Error", ended=True)
    assert final["reason"] == "NothingRecorded" and "before any selected pod was created" in final["message"]
    assert not final.get("profiles")
    assert await api.get(resource_path("SeccompProfile", NS, "early-work")) is None
    await wait_for(lambda: _absent(api, "early.log"), what="the logging profile deleted")
    await wait_for(lambda: _released(api, "early"), what="the recording's finalizer released")


async def _released(api: KubeApi, name: str) -> bool:
    meta = (await api.get(resource_path("ProfileRecording", NS, name)) or {})["metadata"]
    return "secprofiles.io/recording" not in (meta.get("finalizers") or [])


async def _absent(api: KubeApi, profile: str) -> bool:
    return await api.get(resource_path("SeccompProfile", NS, profile)) is None


async def test_a_recorder_without_the_privilege_is_a_clear_error_and_nothing_is_written(
        api: KubeApi, devcluster: DevCluster, tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip(cannot_run("setpriv (util-linux) to run the recorder without CAP_AUDIT_READ"))
    await recording_ready(api, "noaudit")
    recorder = RecorderProcess(devcluster.kubeconfig, NODE, tmp_path / "recorder.log",
                               prefix=(setpriv, "--bounding-set=-audit_read", "--"))
    recorder.start()
    try:
        await api.create(resource_path("Pod", NS), pod("noaudit-1", "noaudit"))
        running = await status(api, "noaudit", "RecorderError", "Error")
        assert f"node {NODE} cannot record: joining the audit multicast group needs CAP_AUDIT_READ" in \
            running["message"]
        await api.patch(resource_path("ProfileRecording", NS, "noaudit"), {"spec": {"stop": True}})
        final = await status(api, "noaudit", "RecorderError", "Error", ended=True)
        assert "nothing written" in final["message"] and not final.get("profiles")
        assert await api.get(resource_path("SeccompProfile", NS, "noaudit-work")) is None
    finally:
        recorder.stop()


async def test_fifty_replicas_on_ten_nodes_make_one_profile_per_container_name(
        api: KubeApi, report_figure: Callable[[str], None]) -> None:
    """Reports written as ten nodes' recorders write them (the recorder itself is proven below and in tests/runtime)."""
    await recording_ready(api, "fleet")
    nodes = [f"fleet-{i}" for i in range(10)]
    ids: dict[str, dict[str, str]] = {}
    for index in range(50):
        name = f"fleet-{index}"
        created = await api.create(resource_path("Pod", NS), pod(name, "fleet", node=nodes[index % 10]))
        ids[created["metadata"]["uid"]] = {"work": f"{index:064x}", "side": f"{index + 100:064x}"}
        await kubelet_reports(api, name, ids[created["metadata"]["uid"]])
    for node in nodes:  # Nodes appear after the pods were admitted (their agents would have installed the profile)
        await create_node(api, node)
    try:
        await status(api, "fleet", "Recording")
        for node in nodes:
            mine = await report_of(api, "fleet", node, lambda r: len(r["spec"].get("pods") or []) == 5)
            entries = [ContainerSyscalls(uid, cid, {X86_64: ["read", "write", "futex" if cname == "work" else "ppoll"]})
                       for uid in (p["uid"] for p in mine["spec"]["pods"]) for cname, cid in ids[uid].items()]
            await _recorder_writes(api, mine, NodeReport(architectures=(X86_64,), containers=tuple(entries)))
        await api.patch(resource_path("ProfileRecording", NS, "fleet"), {"spec": {"stop": True}})
        stopping = await status(api, "fleet", "WaitingForNodes", "Stopping")
        assert "fleet-0" in stopping["message"]
        for node in nodes:
            mine = await report_of(api, "fleet", node, lambda r: bool(r["spec"].get("stop")))
            report = NodeReport.from_status(mine["status"])
            await _recorder_writes(api, mine, NodeReport(final=True, architectures=report.architectures,
                                                         containers=report.containers))
        final = await status(api, "fleet", "ProfilesWritten", "Completed")
        assert final["profiles"] == ["fleet-side", "fleet-work"] and final["pods"] == 50
        assert [n["syscalls"] for n in final["nodes"]] == [{"side": 3, "work": 3}] * 10
        work = await api.get(resource_path("SeccompProfile", NS, "fleet-work")) or {}
        assert work["spec"]["syscalls"] == [{"names": ["futex", "read", "write"], "action": "SCMP_ACT_ALLOW"}]
        assert work["metadata"]["annotations"]["secprofiles.io/recorded-from"] == "fleet"
        assert not work["metadata"].get("ownerReferences")
        sizes = [len(yaml.safe_dump((await api.get(resource_path("RecordingReport", NS, report_name("fleet", n))))
                                    ["status"])) for n in nodes]
        report_figure(f"50 replicas on 10 nodes: 2 profiles (one per container name); node reports "
                      f"{min(sizes)}-{max(sizes)} bytes of YAML status each (10 containers' sets)")
    finally:
        for node in nodes:
            await api.delete(resource_path("Node", name=node))


async def _recorder_writes(api: KubeApi, report: dict[str, Any], node: NodeReport) -> None:
    await api.patch(resource_path("RecordingReport", NS, report["metadata"]["name"], "status"),
                    {"status": node.as_status()})


async def test_deleting_a_recording_writes_its_profiles_before_it_goes(api: KubeApi) -> None:
    await recording_ready(api, "gone")
    created = await api.create(resource_path("Pod", NS), pod("gone-1", "gone"))
    await kubelet_reports(api, "gone-1", {"work": "a" * 64})
    mine = await report_of(api, "gone", NODE, lambda r: bool(r["spec"].get("pods")))
    await _recorder_writes(api, mine, NodeReport(final=True, architectures=(X86_64,), containers=(
        ContainerSyscalls(created["metadata"]["uid"], "a" * 64, {X86_64: ["nanosleep"]}),)))
    await api.delete(resource_path("ProfileRecording", NS, "gone"))
    await wait_for(lambda: _absent_recording(api, "gone"), within=60, what="the recording gone")
    written = await api.get(resource_path("SeccompProfile", NS, "gone-work")) or {}
    assert written["spec"]["syscalls"][0]["names"] == ["nanosleep"]


async def _absent_recording(api: KubeApi, name: str) -> bool:
    return await api.get(resource_path("ProfileRecording", NS, name)) is None


async def test_a_duration_ends_the_recording(api: KubeApi) -> None:
    await recording_ready(api, "short", durationSeconds=3)
    final = await status(api, "short", phase="Error", ended=True)
    assert final["reason"] == "NothingRecorded" and "spec.durationSeconds" in final["message"]


# --------------------------------------------------------------------------- end to end, with podman


@pytest.mark.usefixtures("recording_possible")
async def test_a_pod_recorded_on_its_node_gets_a_profile_its_workload_runs_under(
        api: KubeApi, devcluster: DevCluster, processes: tuple[WebhookOperator, AgentProcess], tmp_path: Path,
        podman: Runner, capsys: pytest.CaptureFixture[str], report_figure: Callable[[str], None]) -> None:  # noqa: F811
    _, agent = processes
    recorder = RecorderProcess(devcluster.kubeconfig, NODE, tmp_path / "recorder.log").start()
    try:
        await wait_for(lambda: asyncio.to_thread(recorder.logged, '"endpoint": "health"'), what="the recorder")
        await recording_ready(api, "busybox", containers=["work"])
        created = await api.create(resource_path("Pod", NS), pod("busybox-1", "busybox"))
        work, side = created["spec"]["containers"]
        assert work["securityContext"]["seccompProfile"]["localhostProfile"] == f"secprofiles/{NS}/busybox.log.json"
        assert "securityContext" not in side  # spec.containers: only "work" is recorded
        uid = created["metadata"]["uid"]
        await report_of(api, "busybox", NODE, lambda r: [p["uid"] for p in r["spec"].get("pods") or []] == [uid])
        # The kubelet's part: the container in the pod's cgroup, under the file the agent wrote; its id reported.
        cidfile = tmp_path / "cid"
        ran = await asyncio.to_thread(subprocess.run, [
            *RUN, "--cidfile", str(cidfile), "--cgroup-parent", f"/{CGROUP_PARENT}/pod{uid}",
            "--security-opt", f"seccomp={agent.file(NS, 'busybox.log')}", IMAGE, "sh", "-c", POD_WORKLOAD],
            capture_output=True, text=True, timeout=300)
        assert ran.stdout.strip() == EXPECTED_OUTPUT, ran.stderr
        container_id = cidfile.read_text().strip()
        await kubelet_reports(api, "busybox-1", {"work": container_id})
        seen = await report_of(api, "busybox", NODE, lambda r: bool((r.get("status") or {}).get("containers")))
        assert [c["containerID"] for c in seen["status"]["containers"]] == [container_id]
        running = await status(api, "busybox", "Recording", check=lambda found: found.get("containers") == ["work"])
        assert running["nodes"][0]["syscalls"]["work"] > 30

        await api.patch(resource_path("ProfileRecording", NS, "busybox"), {"spec": {"stop": True}})
        final = await status(api, "busybox", "ProfilesWritten", "Completed")
        assert final["profiles"] == ["busybox-work"]
        written = await api.get(resource_path("SeccompProfile", NS, "busybox-work")) or {}
        assert written["metadata"]["annotations"]["secprofiles.io/runtime-syscalls"] == "runc-1.1"
        recorded = set(written["spec"]["syscalls"][0]["names"])
        profile = tmp_path / "busybox-work.yaml"
        profile.write_text(yaml.safe_dump({k: written[k] for k in ("apiVersion", "kind", "spec")} |
                                          {"metadata": {"name": "busybox-work", "namespace": NS}}))
        capsys.readouterr()
        assert await asyncio.to_thread(cli.main, ["lint", str(profile)]) == 0, capsys.readouterr()
        capsys.readouterr()
        assert await asyncio.to_thread(cli.main, ["render", str(profile)]) == 0  # the command's own event loop
        rendered = tmp_path / "busybox-work.json"
        rendered.write_text(capsys.readouterr().out)
        again = await asyncio.to_thread(podman, POD_WORKLOAD, rendered)
        assert again.stdout.strip() == EXPECTED_OUTPUT, again.stderr
        script, needs = NEW_SYSCALL_WORKLOADS["chroot"]
        assert not needs & recorded
        denied = await asyncio.to_thread(podman, script, rendered)
        assert "made" not in denied.stdout and "Operation not permitted" in denied.stderr
        assert (await asyncio.to_thread(podman, script)).stdout.strip() == "made"
        memory = recorder.memory()
        report_figure(f"recorded on the node: {len(recorded)} syscalls of container work "
                      f"({final['nodes'][0]['syscalls']['work']} reported by the recorder); the workload runs under "
                      f"the written profile, chroot is denied; recorder process VmRSS {memory.get('VmRSS')} KiB, "
                      f"VmHWM {memory.get('VmHWM')} KiB")
    finally:
        recorder.stop()
        await asyncio.to_thread(_remove_cgroups)


def _remove_cgroups() -> None:
    """The (empty) pod cgroups podman left under CGROUP_PARENT, on every hierarchy."""
    for directory in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}"):
        for child in sorted((d for d in directory.rglob("*") if d.is_dir()), reverse=True):
            child.rmdir()
        directory.rmdir()

