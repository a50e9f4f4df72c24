"""The node recorder's reports: which containers, when written, the final report after a barrier, errors said."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

from devtools.kernel_records import seccomp_text
from secprofiles.agent.recorder import NodeRecorder
from secprofiles.recording.attribution import ContainerAttributor, Outcome, ProcessSnapshot
from secprofiles.recording.audit_records import parse_seccomp_record
from secprofiles.recording.report import new_report
from tests.unit.agent.fakes import FakeApi

BOOT, HZ = 1_000_000.0, 100
POD_A, POD_B = "5f0e4c52-8a9b-4c1d-9e2f-0123456789ab", "6f0e4c52-8a9b-4c1d-9e2f-0123456789ab"
RECORDING = {"metadata": {"name": "web", "namespace": "apps", "uid": "u"}}


class Proc:
    """pid -> its pod's container (one per pod), alive since BOOT + 1."""

    def __init__(self) -> None:
        self.pods = {10: POD_A, 20: POD_B}

    def start_ticks(self, pid: int) -> int | None:
        return HZ if pid in self.pods else None

    def snapshot(self, pid: int) -> ProcessSnapshot | None:
        pod = self.pods.get(pid)
        return ProcessSnapshot(HZ, f"0::/kubepods/pod{pod}/{pid:064x}\n") if pod else None


class Recorder:
    """The surface of ``ContainerRecorder`` the node recorder uses, with a real attributor."""

    def __init__(self) -> None:
        self.attributor = ContainerAttributor(Proc(), ticks_per_second=HZ, boot_realtime=BOOT,
                                              wall_clock=lambda: BOOT + 100)
        self.audit = SimpleNamespace(overruns=0)
        self.outcomes: Counter[Outcome] = Counter()
        self.syncs = 0

    async def sync(self, wait_seconds: float = 10.0) -> None:
        self.syncs += 1

    def syscall(self, pid: int, number: int, comm: str = "sh") -> None:
        record = parse_seccomp_record(seccomp_text(pid, number, time=BOOT + 50, comm=comm))
        self.outcomes[self.attributor.observe(record)] += 1


def report(pods: dict[str, str], node: str = "n1", stop: bool = False, status: Any = None) -> dict[str, Any]:
    obj = new_report(RECORDING, node, pods)
    obj["spec"]["stop"] = stop
    if status is not None:
        obj["status"] = status
    return obj


def setup(recorder: Recorder | None, error: str = "") -> tuple[NodeRecorder, FakeApi, str]:
    api = FakeApi()
    path = "/apis/secprofiles.io/v1alpha1/namespaces/apps/recordingreports/web.n1"
    api.objects[path] = report({POD_A: "web-a"})
    return NodeRecorder(api, "n1", recorder, error, interval=0.01), api, path  # type: ignore[arg-type]


def statuses(api: FakeApi) -> list[dict[str, Any]]:
    return [body["status"] for method, _, body in api.writes if method == "PATCH"]


def test_only_the_reports_pods_are_recorded_and_an_unchanged_set_is_not_written_again() -> None:
    recorder = Recorder()
    node, api, path = setup(recorder)

    async def scenario() -> None:
        await node._on_event("ADDED", report({POD_A: "web-a"}))
        recorder.syscall(10, 0, comm="runc:[2:INIT]")
        recorder.syscall(20, 1)  # pod B is not this report's
        assignment = node.assignments["apps/web.n1"]
        await node._send(assignment, final=False)
        await node._send(assignment, final=False)

    asyncio.run(scenario())
    (status,) = statuses(api)
    assert status["containers"] == [{"podUID": POD_A, "containerID": f"{10:064x}", "runtime": "runc-1.1",
                                     "syscalls": {"SCMP_ARCH_X86_64": ["read"]}}]
    assert status["final"] is False and status["error"] is None and status["architectures"][0] == "SCMP_ARCH_X86_64"


def test_stop_sends_the_final_report_after_a_barrier_and_forgets_the_pods() -> None:
    recorder = Recorder()
    node, api, _ = setup(recorder)

    async def scenario() -> None:
        await node._on_event("ADDED", report({POD_A: "web-a"}))
        recorder.syscall(10, 59)
        await node._on_event("MODIFIED", report({POD_A: "web-a"}, stop=True))
        await node.assignments["apps/web.n1"].finishing  # type: ignore[misc]

    asyncio.run(scenario())
    (status,) = statuses(api)
    assert status["final"] is True and status["containers"][0]["syscalls"] == {"SCMP_ARCH_X86_64": ["execve"]}
    assert recorder.syncs == 1 and recorder.attributor.recorded == {}  # released
    assert node.assignments["apps/web.n1"].final_sent


def test_a_node_that_cannot_record_says_so_in_every_report_even_the_final_one() -> None:
    node, api, _ = setup(None, "joining the audit multicast group needs CAP_AUDIT_READ")

    async def scenario() -> None:
        await node._on_event("ADDED", report({POD_A: "web-a"}, stop=True))
        await node.assignments["apps/web.n1"].finishing  # type: ignore[misc]

    asyncio.run(scenario())
    assert not node.ready
    (status,) = statuses(api)
    assert status["final"] is True and status["containers"] == []
    assert status["error"].startswith("joining the audit multicast group needs CAP_AUDIT_READ")


def test_overruns_and_a_restart_during_the_recording_are_incomplete() -> None:
    recorder = Recorder()
    node, _, _ = setup(recorder)
    earlier = {"final": False, "containers": [{"podUID": POD_A, "containerID": "c", "syscalls": {}}]}
    asyncio.run(node._on_event("ADDED", report({POD_A: "web-a"}, status=earlier)))
    assignment = node.assignments["apps/web.n1"]
    assert "recorder restarted" in node.report(assignment, final=False).incomplete
    assignment.restarted = False
    recorder.audit.overruns = 2
    assert "dropped audit records for this recorder 2 time(s)" in node.report(assignment, final=False).incomplete


def test_reports_of_other_nodes_and_deleted_reports_release_their_pods() -> None:
    recorder = Recorder()
    node, _, _ = setup(recorder)
    asyncio.run(node._on_event("ADDED", report({POD_B: "web-b"}, node="n2")))
    assert node.assignments == {}
    asyncio.run(node._on_event("ADDED", report({POD_A: "web-a"})))
    recorder.syscall(10, 0)
    asyncio.run(node._on_event("DELETED", report({POD_A: "web-a"})))
    assert node.assignments == {} and recorder.attributor.recorded == {}
