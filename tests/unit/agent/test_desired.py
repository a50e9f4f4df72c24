"""The desired state: which keys an event makes dirty, base lookups, relist no-ops."""

from __future__ import annotations

from typing import Any

from secprofiles.agent.desired import DesiredState, slim


def sp(name: str, namespace: str = "apps", base: str | None = None, action: str = "SCMP_ACT_ALLOW") -> dict[str, Any]:
    spec: dict[str, Any] = {"defaultAction": action}
    if base:
        spec["baseProfileName"] = base
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1",
                         "managedFields": [{"big": "x" * 1000}]}, "spec": spec}


def aa(name: str) -> dict[str, Any]:
    return {"kind": "AppArmorProfile", "metadata": {"name": name}, "spec": {"mode": "enforce", "rules": {}}}


def test_added_profile_is_dirty_and_looked_up() -> None:
    state = DesiredState()
    assert state.apply("ADDED", sp("a")) == {"seccomp/apps/a"}
    assert state.lookup("apps", "a") == {"defaultAction": "SCMP_ACT_ALLOW"}
    assert state.lookup("other", "a") is None
    assert state.apply("ADDED", aa("demo")) == {"apparmor/demo"}
    assert set(state) == {"seccomp/apps/a", "apparmor/demo"}


def test_relist_and_metadata_only_changes_are_not_dirty() -> None:
    state = DesiredState()
    state.apply("ADDED", sp("a"))
    changed = sp("a")
    changed["metadata"]["resourceVersion"] = "2"
    changed["metadata"]["labels"] = {"x": "y"}
    assert state.apply("MODIFIED", changed) == set()
    assert state.apply("ADDED", sp("a")) == set()


def test_only_what_rendering_needs_is_kept() -> None:
    kept = slim(sp("a"))
    assert kept["metadata"] == {"name": "a", "namespace": "apps"}
    assert "managedFields" not in str(kept)


def test_a_changed_base_makes_its_dependents_dirty_transitively_within_the_namespace() -> None:
    state = DesiredState()
    state.apply("ADDED", sp("base"))
    state.apply("ADDED", sp("mid", base="base"))
    state.apply("ADDED", sp("leaf", base="mid"))
    state.apply("ADDED", sp("bundled-user", base="bundled/runtime-default"))
    state.apply("ADDED", sp("mid", namespace="other", base="base"))  # another namespace: unaffected
    assert state.apply("MODIFIED", sp("base", action="SCMP_ACT_LOG")) == {
        "seccomp/apps/base", "seccomp/apps/mid", "seccomp/apps/leaf"}
    assert state.apply("DELETED", sp("base")) == {"seccomp/apps/base", "seccomp/apps/mid", "seccomp/apps/leaf"}
    assert state.get("seccomp/apps/base") is None
    # A dependent that switches base leaves the old base's index.
    state.apply("MODIFIED", sp("mid", base="bundled/runtime-default"))
    assert state.apply("ADDED", sp("base")) == {"seccomp/apps/base"}


def test_base_cycles_terminate() -> None:
    state = DesiredState()
    state.apply("ADDED", sp("a", base="b"))
    state.apply("ADDED", sp("b", base="a"))
    assert state.apply("MODIFIED", sp("a", base="b", action="SCMP_ACT_LOG")) == {"seccomp/apps/a", "seccomp/apps/b"}


def test_deleted_events_may_carry_only_identity() -> None:
    state = DesiredState()
    state.apply("ADDED", aa("demo"))
    assert state.apply("DELETED", {"kind": "AppArmorProfile", "metadata": {"name": "demo"}}) == {"apparmor/demo"}
    assert len(state) == 0


def test_other_kinds_are_ignored() -> None:
    assert DesiredState().apply("ADDED", {"kind": "ConfigMap", "metadata": {"name": "x"}}) == set()


def test_status_changes_make_no_work_but_the_validated_hash_is_kept() -> None:
    state = DesiredState()
    state.apply("ADDED", sp("a"))
    validated = {**sp("a"), "status": {"contentHash": "sha256:1", "phase": "Installing", "nodes": {"installed": 0}}}
    assert state.apply("MODIFIED", validated) == set()  # kept for the next rendering, no work
    assert state.get("seccomp/apps/a")["status"] == {"contentHash": "sha256:1"}  # type: ignore[index]
    counted = {**validated, "status": {**validated["status"], "phase": "Installed", "nodes": {"installed": 3}}}
    assert state.apply("MODIFIED", counted) == set()  # the operator counting nodes wakes no agent
    assert slim(counted)["status"] == {"contentHash": "sha256:1"}

