"""The operator's pure parts: pod references, cluster state, status aggregation."""

from __future__ import annotations

import pytest

from secprofiles.controller import aggregate
from secprofiles.controller.nodes import NodeCounts
from secprofiles.controller.operator import seed
from secprofiles.controller.state import ClusterState
from secprofiles.model.findings import Finding
from tests.reports import expected_buckets


def pod(name: str, spec: dict, annotations: dict | None = None, namespace: str = "apps") -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}}, "spec": spec}


LOCAL = {"type": "Localhost"}


def test_references_cover_every_level_and_form() -> None:
    from secprofiles.controller.podrefs import references

    spec = {
        "securityContext": {"seccompProfile": {**LOCAL, "localhostProfile": "secprofiles/apps/pod-level.json"}},
        "initContainers": [{"name": "i", "securityContext": {"appArmorProfile": {**LOCAL, "localhostProfile": "aa-init"}}}],
        "containers": [
            {"name": "c", "securityContext": {"seccompProfile": {**LOCAL, "localhostProfile": "secprofiles/apps/c.json"}}},
            {"name": "d", "securityContext": {"seccompProfile": {**LOCAL, "localhostProfile": "other/not-ours.json"}}},
            {"name": "e", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
        ],
    }
    annotations = {"container.apparmor.security.beta.kubernetes.io/c": "localhost/aa-annotated",
                   "container.apparmor.security.beta.kubernetes.io/e": "runtime/default"}
    assert references(pod("p", spec, annotations)) == {
        "seccomp/apps/pod-level", "seccomp/apps/c", "apparmor/aa-init", "apparmor/aa-annotated"}


def profile(name: str, base: str | None = None, namespace: str = "apps") -> dict:
    spec = {"defaultAction": "SCMP_ACT_ALLOW", **({"baseProfileName": base} if base else {})}
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
            "metadata": {"name": name, "namespace": namespace, "generation": 1, "uid": name}, "spec": spec}


def test_base_change_dirties_every_dependent() -> None:
    state = ClusterState()
    for obj in (profile("root"), profile("mid", "root"), profile("leaf", "mid"), profile("lone"),
                profile("root", namespace="other")):
        state.apply_profile("ADDED", obj)
    assert state.apply_profile("MODIFIED", profile("root")) == {"seccomp/apps/root", "seccomp/apps/mid",
                                                                 "seccomp/apps/leaf"}


def test_dependents_follow_a_base_change_and_a_deletion() -> None:
    state = ClusterState()
    for obj in (profile("a"), profile("b"), profile("child", "a"), profile("cycle-1", "cycle-2"),
                profile("cycle-2", "cycle-1")):
        state.apply_profile("ADDED", obj)
    state.apply_profile("MODIFIED", profile("child", "b"))
    assert state.dependents("seccomp/apps/a") == set()
    assert state.dependents("seccomp/apps/b") == {"seccomp/apps/child"}
    assert state.dependents("seccomp/apps/cycle-1") == {"seccomp/apps/cycle-1", "seccomp/apps/cycle-2"}
    state.apply_profile("DELETED", profile("child", "b"))
    assert state.dependents("seccomp/apps/b") == set()
    assert "seccomp/apps/b" not in state.children


def test_pod_references_are_counted_and_released() -> None:
    state = ClusterState()
    spec = {"containers": [{"name": "c", "securityContext": {
        "seccompProfile": {**LOCAL, "localhostProfile": "secprofiles/apps/p.json"}}}]}
    assert state.apply_pod("ADDED", pod("a", spec)) == {"seccomp/apps/p"}
    assert state.apply_pod("MODIFIED", pod("a", spec)) == set()
    state.apply_pod("ADDED", pod("b", spec))
    assert state.users["seccomp/apps/p"] == {"apps/a", "apps/b"}
    state.apply_pod("DELETED", pod("a", spec))
    assert state.apply_pod("DELETED", pod("b", spec)) == {"seccomp/apps/p"}
    assert "seccomp/apps/p" not in state.users
    assert state.pod_refs == {}


def report(node: str, processed: dict[str, str], **status: object) -> dict:
    return {"metadata": {"name": node}, "status": {"buckets": expected_buckets(processed), **status}}


def test_node_deletion_drops_it_and_windows_or_tainted_nodes_are_not_desired() -> None:
    state = ClusterState()
    state.apply_profile("ADDED", profile("p"))
    state.set_rendering("seccomp/apps/p", "sha256:x")
    assert state.apply_node("ADDED", {"metadata": {"name": "n1"}}) == {"seccomp/apps/p"}
    state.apply_node("ADDED", {"metadata": {"name": "w", "labels": {"kubernetes.io/os": "windows"}}})
    state.apply_node("ADDED", {"metadata": {"name": "new"},
                               "spec": {"taints": [{"key": "secprofiles.io/not-ready", "effect": "NoSchedule"}]}})
    assert state.view.nodes == {"n1"}  # the new node joins once its agent removes the readiness taint
    state.apply_report("ADDED", report("n1", {"seccomp/apps/p": "sha256:x"}))
    assert state.node_counts("seccomp/apps/p") == NodeCounts(1, 1, {})
    state.apply_node("DELETED", {"metadata": {"name": "n1"}})
    assert state.node_counts("seccomp/apps/p") == NodeCounts(0, 0, {})


def test_report_changes_dirty_only_the_profiles_of_changed_buckets_that_now_match() -> None:
    state = ClusterState()
    state.apply_node("ADDED", {"metadata": {"name": "n"}})
    keys = [f"seccomp/apps/p{i}" for i in range(200)]
    state.view.set_renderings({key: "h" for key in keys})
    assert state.apply_report("ADDED", report("n", {key: "h" for key in keys})) == set(keys)
    changed = {key: "h" for key in keys} | {keys[7]: "h2"}
    state.set_rendering(keys[7], "h2")
    dirty = state.apply_report("MODIFIED", report("n", changed))
    assert dirty == {keys[7]}  # confirmed: the only key of its bucket that waited


def state_of(**overrides: object) -> aggregate.ProfileState:
    values: dict = {"generation": 3, "content_hash": "sha256:new", "localhost_profile": "secprofiles/apps/p.json",
                    "findings": (), "deleting": False, "users": ()}
    values.update(overrides)
    return aggregate.ProfileState(**values)


def test_installed_only_when_every_node_has_the_current_hash() -> None:
    status = aggregate.status(state_of(), NodeCounts(2, 1, {}))
    assert status["phase"] == "Installing"
    assert status["nodes"] == {"desired": 2, "installed": 1, "failed": 0}
    status = aggregate.status(state_of(), NodeCounts(2, 2, {}))
    assert status["phase"] == "Installed"
    assert status["conditions"][0]["status"] == "True"
    assert status["observedGeneration"] == 3


def test_a_failing_node_makes_the_profile_error_naming_it() -> None:
    status = aggregate.status(state_of(), NodeCounts(2, 1, {"n2": "AppArmor not enabled on node"}))
    assert status["phase"] == "Error"
    assert status["failedNodes"] == [{"node": "n2", "message": "AppArmor not enabled on node"}]
    assert "n2: AppArmor not enabled on node" in status["conditions"][0]["message"]


def test_invalid_profile_is_error_and_has_no_hash() -> None:
    status = aggregate.status(state_of(findings=(Finding("spec.syscalls[0].names[0]", "unknown syscall 'x'"),),
                                       content_hash=None), NodeCounts(1, 0, {}))
    assert status["phase"] == "Error"
    assert status["contentHash"] is None
    assert "spec.syscalls[0].names[0]: unknown syscall 'x'" in status["conditions"][0]["message"]


def test_terminating_lists_a_bounded_number_of_users() -> None:
    users = tuple(f"apps/pod-{i:03d}" for i in range(50))
    status = aggregate.status(state_of(deleting=True, users=users), NodeCounts(1, 1, {}))
    assert status["phase"] == "Terminating"
    assert status["inUseBy"]["count"] == 50
    assert len(status["inUseBy"]["pods"]) == 20


def test_transition_time_kept_while_status_unchanged() -> None:
    old = {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "T0"}]}
    new = aggregate.with_transition_times({"conditions": [{"type": "Ready", "status": "False"}]}, old, "T1")
    assert new["conditions"][0]["lastTransitionTime"] == "T0"
    new = aggregate.with_transition_times({"conditions": [{"type": "Ready", "status": "True"}]}, old, "T1")
    assert new["conditions"][0]["lastTransitionTime"] == "T1"


class ListingApi:
    """Answers the two LISTs the operator makes at start-up; fails them all with ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.paths: list[str] = []

    async def request(self, method: str, path: str) -> dict:
        self.paths.append(path)
        if self.error:
            raise self.error
        if path == "/api/v1/nodes":
            return {"items": [{"metadata": {"name": "node-1"}}, {"metadata": {"name": "node-2"}}]}
        if path.endswith("/nodeprofilestatuses"):
            return {"items": [report("node-1", {"seccomp/apps/p": "sha256:1"})]}
        if path.endswith("/seccompprofiles"):
            return {"items": [{"metadata": {"name": "p", "namespace": "apps", "generation": 1},
                               "spec": {"defaultAction": "SCMP_ACT_ALLOW"}}]}
        return {"items": []}


async def test_start_up_seeds_nodes_reports_and_profiles_before_the_first_evaluation() -> None:
    """Without the webhook too: the reconciler's first batch of renderings must hold every profile, or a bucket's
    expected digest lacks the profiles Kopf has not delivered yet and its profiles are published Installing."""
    state = ClusterState()
    await seed(state, ListingApi(), admission=False)  # type: ignore[arg-type]
    assert state.view.nodes == {"node-1", "node-2"}
    assert set(state.profiles) == {"seccomp/apps/p"}
    state.set_rendering("seccomp/apps/p", "sha256:1")  # the reconciler's first evaluations
    assert state.node_counts("seccomp/apps/p") == NodeCounts(2, 1, {})


async def test_start_up_without_the_api_starts_empty_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    state = ClusterState()
    await seed(state, ListingApi(OSError("connection refused")), admission=False)  # type: ignore[arg-type]
    assert state.view.nodes == set()
    assert "starting without the initial listing (connection refused)" in caplog.text


async def test_start_up_with_the_webhook_needs_its_listing() -> None:
    """The webhook must not serve from a half-built state: without the listing the start-up fails (Kopf retries)."""
    with pytest.raises(OSError, match="connection refused"):
        await seed(ClusterState(), ListingApi(OSError("connection refused")), admission=True)  # type: ignore[arg-type]


def test_events_for_phase_changes_new_failing_nodes_and_new_findings() -> None:
    installing = aggregate.status(state_of(), NodeCounts(3, 1, {}))
    one_failed = aggregate.status(state_of(), NodeCounts(3, 1, {"n2": "disk full"}))
    two_failed = aggregate.status(state_of(), NodeCounts(3, 1, {"n2": "disk full", "n3": "disk full"}))
    assert aggregate.event_for({}, installing) == aggregate.EventNote("Normal", "Installing", "installed on 1 of 3 node(s)")
    note = aggregate.event_for(installing, one_failed)
    assert note is not None and (note.type, note.reason) == ("Warning", "NodeFailed") and "n2: disk full" in note.message
    # Still Error, one more node failing: a person wants to hear about n3 (and only n3).
    assert aggregate.event_for(one_failed, two_failed) == aggregate.EventNote(
        "Warning", "NodeFailed", "failed on 1 more node(s): n3: disk full")
    assert aggregate.event_for(two_failed, two_failed) is None
    assert aggregate.event_for(two_failed, one_failed) is None  # a recovery within Error is no news
    invalid = aggregate.status(state_of(findings=(Finding("spec.defaultAction", "required"),), content_hash=None),
                               NodeCounts(1, 0, {}))
    edited = aggregate.status(state_of(findings=(Finding("spec.syscalls[0].names[0]", "unknown syscall 'x'"),),
                                       content_hash=None), NodeCounts(1, 0, {}))
    assert aggregate.event_for(invalid, invalid) is None
    note = aggregate.event_for(invalid, edited)
    assert note is not None and note.reason == "Invalid" and "unknown syscall 'x'" in note.message
