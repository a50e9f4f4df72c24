"""A profile's status from what its nodes report: pure, so it is tested without a cluster."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from secprofiles.controller.nodes import NodeCounts
from secprofiles.model.findings import Finding

MAX_LISTED = 20
PENDING, INSTALLING, INSTALLED_PHASE, ERROR_PHASE, TERMINATING = (
    "Pending", "Installing", "Installed", "Error", "Terminating")


@dataclass(frozen=True)
class ProfileState:
    """Everything the status of one profile depends on."""

    generation: int
    content_hash: str | None
    localhost_profile: str | None
    findings: tuple[Finding, ...]
    deleting: bool
    users: tuple[str, ...]


def status(state: ProfileState, nodes: NodeCounts) -> dict[str, Any]:
    """The ``status`` the operator publishes (without conditions' transition times; see ``conditions``).

    ``nodes`` counts the desired nodes and, for a valid profile, those that have its current rendering installed
    and those where it failed (see ``nodes.NodeView``).
    """
    desired = nodes.desired
    result: dict[str, Any] = {"observedGeneration": state.generation}
    if state.findings:
        message = "; ".join(str(f) for f in state.findings)
        phase, reason, text = ERROR_PHASE, "Invalid", f"invalid profile, not sent to nodes: {message}"
        result.update(contentHash=None, localhostProfile=None,
                      nodes={"desired": desired, "installed": 0, "failed": 0}, failedNodes=[])
    else:
        assert state.content_hash is not None
        installed, failed = nodes.installed, len(nodes.failed)
        failed_nodes = [{"node": node, "message": message} for node, message in nodes.failed.items()]
        result.update(contentHash=state.content_hash, localhostProfile=state.localhost_profile,
                      nodes={"desired": desired, "installed": installed, "failed": failed},
                      failedNodes=failed_nodes[:MAX_LISTED])
        if failed:
            listed = "; ".join(f"{f['node']}: {f['message']}" for f in failed_nodes[:3])
            more = f" (and {failed - 3} more)" if failed > 3 else ""
            text = f"failed on {failed} of {desired} node(s): {listed}{more}"
            phase, reason = ERROR_PHASE, "NodeFailed"
        elif not desired:
            phase, reason, text = PENDING, "NoNodes", "no nodes to install on yet"
        elif installed == desired:
            phase, reason, text = INSTALLED_PHASE, "Installed", f"installed on all {installed} node(s)"
        else:
            phase, reason, text = INSTALLING, "Installing", f"installed on {installed} of {desired} node(s)"
    result["inUseBy"] = {"count": len(state.users), "pods": sorted(state.users)[:MAX_LISTED]}
    if state.deleting:
        listed = ", ".join(sorted(state.users)[:5]) + (" …" if len(state.users) > 5 else "")
        phase, reason = TERMINATING, "InUse"
        text = f"deletion waits for {len(state.users)} pod(s) that reference it: {listed}"
    result["phase"] = phase
    result["conditions"] = [{"type": "Ready", "status": "True" if phase == INSTALLED_PHASE else "False",
                             "reason": reason, "message": text, "observedGeneration": state.generation}]
    return result


def with_transition_times(new: dict[str, Any], old: dict[str, Any] | None, now: str) -> dict[str, Any]:
    """Keep a condition's lastTransitionTime unless its status changed."""
    previous = {c.get("type"): c for c in (old or {}).get("conditions") or []}
    for condition in new.get("conditions", []):
        before = previous.get(condition["type"])
        same = before is not None and before.get("status") == condition["status"]
        condition["lastTransitionTime"] = before.get("lastTransitionTime", now) if same and before else now
    return new


@dataclass(frozen=True)
class EventNote:
    """A Kubernetes Event to post about a status change."""

    type: str  # Normal or Warning
    reason: str
    message: str


def event_for(old: Mapping[str, Any], new: Mapping[str, Any]) -> EventNote | None:
    """The Event a person wants for the change from status ``old`` to ``new``, if any: every phase change, and
    within Error each newly failing node and each new validation message (an edit that is still invalid)."""
    condition = new["conditions"][0]
    kind = "Warning" if new["phase"] == ERROR_PHASE else "Normal"
    if old.get("phase") != new["phase"]:
        return EventNote(kind, condition["reason"], condition["message"])
    if condition["reason"] == "NodeFailed":
        before = {f["node"] for f in old.get("failedNodes") or []}
        newly = [f for f in new.get("failedNodes") or [] if f["node"] not in before]
        if newly:
            listed = "; ".join(f"{f['node']}: {f['message']}" for f in newly)
            return EventNote(kind, "NodeFailed", f"failed on {len(newly)} more node(s): {listed}")
    previous = (old.get("conditions") or [{}])[0]
    if condition["reason"] == "Invalid" and previous.get("message") != condition["message"]:
        return EventNote(kind, "Invalid", condition["message"])
    return None
