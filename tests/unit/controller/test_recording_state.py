"""The operator's recording decisions (``recording_state``): what it keeps, what it plans, what it writes."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from secprofiles.controller.admission.binding import ProfileInfo
from secprofiles.controller.recording_state import GRACE, Finish, RecordingState, Running, Stopping, plan
from secprofiles.model import schema
from secprofiles.recording.report import ContainerSyscalls, NodeReport, new_report
from secprofiles.recording.runtime_syscalls import runtime_syscalls

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
ARCHES = ("SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_X86_64")
READY = ProfileInfo("Installed", "sha256:1")
X86_64 = "SCMP_ARCH_X86_64"


def recording(name: str = "web", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "ProfileRecording",
            "metadata": {"name": name, "namespace": "apps", "uid": f"uid-{name}", "generation": 1,
                         "creationTimestamp": "2026-01-02T03:00:00Z"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, **spec}}


def pod(name: str, node: str | None = "n1", recorded: str | None = "web", labels: dict[str, str] | None = None,
        containers: dict[str, str] | None = None, namespace: str = "apps") -> dict[str, Any]:
    annotations = {"secprofiles.io/recording": recorded} if recorded else {}
    statuses = [{"name": cname, "containerID": f"containerd://{cid}"} for cname, cid in (containers or {}).items()]
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "annotations": annotations,
                         "labels": labels if labels is not None else {"app": "web"}},
            "spec": {"nodeName": node} if node else {}, "status": {"containerStatuses": statuses}}


def report(node: str, *containers: ContainerSyscalls, final: bool = False, stop: bool = False, error: str = "",
           incomplete: str = "", pods: dict[str, str] | None = None) -> dict[str, Any]:
    obj = new_report(recording(), node, pods or {})
    obj["spec"]["stop"] = stop
    obj["status"] = {k: v for k, v in NodeReport(final=final, error=error, incomplete=incomplete,
                                                   architectures=ARCHES, containers=containers).as_status().items()
                     if v is not None}
    return obj


def syscalls(pod_name: str, cid: str, *names: str, runtime: str | None = None) -> ContainerSyscalls:
    return ContainerSyscalls(f"uid-{pod_name}", cid, {X86_64: sorted(names)}, runtime)


def state_with(*objs: dict[str, Any], **spec: Any) -> RecordingState:
    state = RecordingState()
    state.apply_recording("ADDED", recording(**spec))
    state.apply_log_profile("ADDED", {"metadata": {"name": "web.log", "namespace": "apps",
                                                   "annotations": {"secprofiles.io/recording": "web"}}})
    for obj in objs:
        if "kind" in obj:  # a RecordingReport (pods here carry no kind)
            state.apply_report("ADDED", obj)
        else:
            state.apply_pod("ADDED", obj)
    return state


def plan_of(state: RecordingState, info: ProfileInfo | None = READY, waited: float = 0.0,
            nodes: tuple[str, ...] = ("n1", "n2")) -> Running | Stopping | Finish:
    return plan(state.entries["apps/web"], NOW, info, ARCHES, waited, nodes)


# -- running ---------------------------------------------------------------------------------------------------

def test_a_selector_matching_nothing_says_so() -> None:
    step = plan_of(state_with(pod("db-1", recorded=None, labels={"app": "db"})))
    assert isinstance(step, Running)
    assert (step.status["phase"], step.status["reason"]) == ("Pending", "NoMatchingPods")
    assert "no pod in namespace apps matches spec.podSelector" in step.status["message"]


def test_matching_pods_created_before_the_recording_are_named_as_the_reason() -> None:
    step = plan_of(state_with(pod("web-old", recorded=None)))
    assert isinstance(step, Running) and step.status["reason"] == "WaitingForPods"
    assert "created before the recording" in step.status["message"]


@pytest.mark.parametrize(("info", "shown"), [(None, "not yet created"), (ProfileInfo("Installing", None), "Installing")])
def test_until_the_logging_profile_is_installed_pods_are_not_recorded(info: ProfileInfo | None, shown: str) -> None:
    step = plan_of(state_with(), info)
    assert isinstance(step, Running) and step.status["reason"] == "WaitingForProfile" and shown in step.status["message"]
    assert step.log_profile["spec"] == {"defaultAction": "SCMP_ACT_LOG", "architectures": sorted(ARCHES)}
    assert step.log_profile["metadata"]["annotations"] == {"secprofiles.io/recording": "web"}


def test_a_logging_profile_that_is_someone_elses_is_an_error_and_records_nothing() -> None:
    state = state_with()
    state.apply_log_profile("MODIFIED", {"metadata": {"name": "web.log", "namespace": "apps"}})
    step = plan_of(state)
    assert isinstance(step, Running) and (step.status["phase"], step.status["reason"]) == ("Error", "ProfileConflict")
    assert state.running_in("apps", NOW) == []


def test_recorded_pods_get_one_report_per_node_and_show_in_the_status() -> None:
    state = state_with(pod("web-1", "n1"), pod("web-2", "n2"), pod("web-3", "n2"), pod("web-4", None),
                       report("n2", syscalls("web-2", "c2", "read", "write")))
    step = plan_of(state)
    assert isinstance(step, Running) and (step.status["phase"], step.status["reason"]) == ("Recording", "Recording")
    assert step.reports == {"n1": {"uid-web-1": "web-1"}, "n2": {"uid-web-2": "web-2", "uid-web-3": "web-3"}}
    assert step.status["pods"] == 4 and step.status["podNames"] == ["web-1", "web-2", "web-3", "web-4"]
    assert step.status["recordingProfile"] == "secprofiles/apps/web.log.json"
    assert state.running_in("apps", NOW)[0].name == "web" and state.running_in("other", NOW) == []


def test_a_node_that_cannot_record_makes_the_running_recording_an_error() -> None:
    state = state_with(pod("web-1"), report("n1", error="joining the audit multicast group needs CAP_AUDIT_READ"))
    step = plan_of(state)
    assert isinstance(step, Running) and step.status["reason"] == "RecorderError"
    assert "node n1 cannot record: joining the audit multicast group needs CAP_AUDIT_READ" in step.status["message"]
    assert step.status["nodes"][0]["error"].startswith("joining")


def test_only_pods_of_namespaces_with_recordings_and_selected_pods_are_kept() -> None:
    state = state_with(pod("web-1"))
    assert state.apply_pod("ADDED", pod("x", namespace="elsewhere")) == set()
    state.apply_pod("ADDED", pod("db", recorded=None, labels={"app": "db"}))
    entry = state.entries["apps/web"]
    assert set(entry.pods) == {"uid-web-1"} and entry.matching == {"web-1"}


# -- stopping and finishing --------------------------------------------------------------------------------------

def two_nodes(final: bool = True, **extra: Any) -> RecordingState:
    """web-1 (n1) and web-2, web-3 (n2): containers app and side; runc's init seen in one."""
    pods = [pod("web-1", "n1", containers={"app": "a1", "side": "s1"}),
            pod("web-2", "n2", containers={"app": "a2", "side": "s2"}),
            pod("web-3", "n2", containers={"app": "a3"})]
    reports = [report("n1", syscalls("web-1", "a1", "read", "execve", runtime="runc-1.1"),
                      syscalls("web-1", "s1", "nanosleep"), syscalls("web-1", "pause0", "pause"), final=final,
                      stop=True),
               report("n2", syscalls("web-2", "a2", "write", "execve"), syscalls("web-3", "a3", "openat"),
                      syscalls("web-2", "s2", "clock_nanosleep"), final=final, stop=True)]
    return state_with(*pods, *reports, stop=True, **extra)


def test_an_ended_recording_waits_for_the_final_reports_then_gives_up() -> None:
    state = two_nodes(final=False)
    step = plan_of(state, waited=5.0)
    assert isinstance(step, Stopping) and step.wait == GRACE - 5.0
    assert step.status["reason"] == "WaitingForNodes" and "n1, n2" in step.status["message"]
    gave_up = plan_of(state, waited=GRACE)
    assert isinstance(gave_up, Finish) and gave_up.profiles == ()
    assert (gave_up.status["phase"], gave_up.status["reason"]) == ("Error", "Incomplete")
    assert "node(s) n1, n2 sent no final report" in gave_up.status["message"] and gave_up.status["endTime"]


def test_a_node_that_is_gone_is_not_waited_for() -> None:
    step = plan_of(two_nodes(final=False), nodes=())
    assert isinstance(step, Finish)


def test_profiles_merge_every_replica_on_every_node_per_container_name() -> None:
    step = plan_of(two_nodes())
    assert isinstance(step, Finish) and (step.status["phase"], step.status["reason"]) == ("Completed",
                                                                                          "ProfilesWritten")
    by_name = {p["metadata"]["name"]: p for p in step.profiles}
    assert sorted(by_name) == step.status["profiles"] == ["web-app", "web-side"]
    app = by_name["web-app"]
    assert app["metadata"]["annotations"] == {"secprofiles.io/recorded-by": "ProfileRecording",
                                              "secprofiles.io/recorded-from": "web",
                                              "secprofiles.io/runtime-syscalls": "runc-1.1"}
    assert app["spec"]["syscalls"][0]["names"] == ["execve", "openat", "read", "write"]
    assert set(app["spec"]["syscalls"][1]["names"]) == set(runtime_syscalls("runc-1.1")) - {"execve", "openat",
                                                                                              "read", "write"}
    assert app["spec"]["architectures"] == sorted(ARCHES) and app["spec"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert by_name["web-side"]["spec"]["syscalls"] == [{"names": ["clock_nanosleep", "nanosleep"],
                                                        "action": "SCMP_ACT_ALLOW"}]  # no runc init seen there
    assert "ownerReferences" not in app["metadata"] and schema.validate(app) == []
    assert step.status["nodes"] == [
        {"name": "n1", "pods": 0, "final": True, "syscalls": {"app": 2, "side": 1}},
        {"name": "n2", "pods": 0, "final": True, "syscalls": {"app": 3, "side": 1}}]


def test_unattributed_records_are_shown_and_warned_about() -> None:
    state = two_nodes()
    view = state.entries["apps/web"].reports["n2"]
    state.entries["apps/web"].reports["n2"] = type(view)(view.pods, view.stop, NodeReport(
        final=True, unattributed_records=7, architectures=ARCHES, containers=view.node.containers))
    step = plan_of(state)
    assert isinstance(step, Finish) and step.status["phase"] == "Completed"
    assert step.status["nodes"][1]["unattributedRecords"] == 7
    assert "on node(s) n2 logged syscalls of processes that were gone" in step.status["message"]


def test_by_pod_and_selected_containers() -> None:
    step = plan_of(two_nodes(mergeStrategy="ByPod", containers=["app"], defaultAction="SCMP_ACT_KILL_PROCESS"))
    assert isinstance(step, Finish)
    assert [p["metadata"]["name"] for p in step.profiles] == ["web-web-1-app", "web-web-2-app", "web-web-3-app"]
    assert {p["spec"]["defaultAction"] for p in step.profiles} == {"SCMP_ACT_KILL_PROCESS"}


@pytest.mark.parametrize(("extra", "reason", "message"), [
    ({"error": "no audit"}, "RecorderError", "node n3 could not record: no audit; nothing written"),
    ({"incomplete": "the kernel dropped audit records"}, "Incomplete", "node n3: the kernel dropped audit records"),
])
def test_a_node_that_failed_means_nothing_is_written(extra: dict[str, str], reason: str, message: str) -> None:
    state = two_nodes()
    state.apply_report("ADDED", report("n3", final=True, stop=True, **extra))
    step = plan_of(state, nodes=("n1", "n2", "n3"))
    assert isinstance(step, Finish) and step.profiles == ()
    assert (step.status["phase"], step.status["reason"]) == ("Error", reason) and message in step.status["message"]


def test_ended_before_any_pod_ran_writes_no_empty_profile_and_says_why() -> None:
    step = plan_of(state_with(stop=True))
    assert isinstance(step, Finish) and step.profiles == ()
    assert step.status["reason"] == "NothingRecorded"
    assert "ended (spec.stop) before any selected pod was created" in step.status["message"]
    started = plan_of(state_with(pod("web-1"), report("n1", final=True, stop=True), stop=True))
    assert isinstance(started, Finish) and started.status["reason"] == "NothingRecorded"
    assert "1 pod(s) were put on the logging profile" in started.status["message"]


def test_an_invalid_recording_finishes_with_its_findings() -> None:
    state = state_with(podSelector={})
    step = plan_of(state)
    assert isinstance(step, Finish) and step.status["reason"] == "Invalid"
    assert "spec.podSelector: must select by at least one label" in step.status["message"]
    assert state.running_in("apps", NOW) == []


def test_a_finished_recording_stays_finished() -> None:
    state = two_nodes()
    entry = state.entries["apps/web"]
    assert not entry.finished
    done = recording(stop=True)
    done["status"] = {"phase": "Completed", "endTime": "2026-01-02T03:05:00Z", "observedGeneration": 1}
    state.apply_recording("MODIFIED", done)
    assert state.entries["apps/web"].finished


def test_a_restarted_container_and_a_deleted_pod_keep_their_names() -> None:
    state = state_with(pod("web-1", containers={"app": "first"}))
    restarted = pod("web-1", containers={"app": "second"})
    restarted["status"]["containerStatuses"][0]["lastState"] = {"terminated": {"containerID": "containerd://first"}}
    state.apply_pod("MODIFIED", restarted)
    state.apply_pod("DELETED", restarted)
    assert state.entries["apps/web"].pods["uid-web-1"].containers == {"first": "app", "second": "app"}
    assert state.entries["apps/web"].pods["uid-web-1"].deleted


def test_fifty_replicas_on_ten_nodes_make_one_profile_per_container_name_from_small_reports() -> None:
    objs: list[dict[str, Any]] = []
    for node in range(10):
        pods = {f"web-{node}-{i}": {"app": f"a{node}{i}", "side": f"s{node}{i}"} for i in range(5)}
        objs += [pod(name, f"n{node}", containers=ids) for name, ids in pods.items()]
        objs.append(report(f"n{node}", *[syscalls(name, ids["app"], "read", "write") for name, ids in pods.items()],
                           *[syscalls(name, ids["side"], "nanosleep") for name, ids in pods.items()],
                           final=True, stop=True))
    state = state_with(*objs, stop=True)
    step = plan(state.entries["apps/web"], NOW, READY, ARCHES, 0.0, [f"n{i}" for i in range(10)])
    assert isinstance(step, Finish) and [p["metadata"]["name"] for p in step.profiles] == ["web-app", "web-side"]
    largest = max(len(json.dumps(o["status"])) for o in objs if "kind" in o)
    assert largest < 4096, largest  # sets, not events: 10 containers' sets per node
