"""The RecordingReport contract: one object per recording and node, between the operator and that node's recorder.

The operator writes ``spec``: the recording, the node, the recorded pods scheduled there (by UID) and, once the
recording ended, ``stop``. The node's recorder writes ``status``: per recorded container (pod UID, container id)
the syscall names per architecture and the runtime whose init it saw, the node's architectures, and ``final``
once everything recorded before ``stop`` was seen (or ``error`` when it cannot record at all). Pure.

Invariants:
- Sets, not events: a container's entry is bounded by the syscall table (a few hundred names), so a report is
  bounded by the recorded containers on one node, whatever their syscall rate.
- Deterministic (sorted) so an unchanged set writes nothing; container *names* are not the recorder's business
  (it reads no pods): the operator maps container ids to names from the pods' status.
- The name is a valid object name for any recording and node name (hashed when the two do not fit).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from secprofiles.model import schema
from secprofiles.objects import Object
from secprofiles.recording.syscall_sets import Report

MAX_NAME = 253


def report_name(recording: str, node: str) -> str:
    """``<recording>.<node>``, or ``<recording>.<hash of node>`` when that is too long."""
    name = f"{recording}.{node}"
    if len(name) <= MAX_NAME:
        return name
    return f"{recording[:MAX_NAME - 18]}.{hashlib.sha256(node.encode()).hexdigest()[:16]}"


def new_report(recording: Object, node: str, pods: Mapping[str, str]) -> Object:
    """A RecordingReport for ``recording`` (a ProfileRecording object) on ``node``, owned by the recording.

    ``pods`` maps pod UIDs to pod names."""
    meta = recording["metadata"]
    return {"apiVersion": schema.API_VERSION, "kind": schema.RECORDING_REPORT,
            "metadata": {"name": report_name(meta["name"], node), "namespace": meta["namespace"],
                         "ownerReferences": [{"apiVersion": schema.API_VERSION, "kind": schema.PROFILE_RECORDING,
                                              "name": meta["name"], "uid": meta["uid"]}]},
            "spec": {"recording": meta["name"], "nodeName": node, "pods": pod_list(pods)}}


def pod_list(pods: Mapping[str, str]) -> list[Object]:
    """``spec.pods``: sorted by UID."""
    return [{"uid": uid, "name": name} for uid, name in sorted(pods.items())]


@dataclass(frozen=True)
class ContainerSyscalls:
    """What one node recorded for one container."""

    pod_uid: str
    container_id: str
    syscalls: Report
    runtime: str | None = None

    def as_status(self) -> Object:
        """One ``status.containers`` entry."""
        entry: Object = {"podUID": self.pod_uid, "containerID": self.container_id, "syscalls": self.syscalls}
        if self.runtime:
            entry["runtime"] = self.runtime
        return entry

    @classmethod
    def from_status(cls, entry: Mapping[str, object]) -> ContainerSyscalls:
        """Parse one ``status.containers`` entry (malformed parts read as empty)."""
        raw = entry.get("syscalls")
        syscalls = {str(arch): sorted(str(n) for n in names) for arch, names in raw.items()
                    if isinstance(names, list)} if isinstance(raw, dict) else {}
        runtime = entry.get("runtime")
        return cls(str(entry.get("podUID", "")), str(entry.get("containerID", "")), syscalls,
                   str(runtime) if runtime else None)


@dataclass(frozen=True)
class NodeReport:
    """A RecordingReport's status, parsed."""

    final: bool = False
    error: str = ""
    incomplete: str = ""
    unattributed_records: int = 0
    architectures: tuple[str, ...] = ()
    containers: tuple[ContainerSyscalls, ...] = field(default=())

    def as_status(self) -> Object:
        """The status the recorder writes (a merge patch of it replaces every field it names)."""
        return {"final": self.final, "error": self.error or None, "incomplete": self.incomplete or None,
                "unattributedRecords": self.unattributed_records, "architectures": list(self.architectures),
                "containers": [c.as_status() for c in sorted(self.containers, key=_order)]}

    @classmethod
    def from_status(cls, status: Mapping[str, object] | None) -> NodeReport:
        """Parse ``status`` (None or empty: nothing reported yet)."""
        status = status or {}
        containers = status.get("containers")
        architectures = status.get("architectures")
        unattributed = status.get("unattributedRecords")
        return cls(final=bool(status.get("final")), error=str(status.get("error") or ""),
                   incomplete=str(status.get("incomplete") or ""),
                   unattributed_records=unattributed if isinstance(unattributed, int) else 0,
                   architectures=tuple(str(a) for a in architectures) if isinstance(architectures, list) else (),
                   containers=tuple(ContainerSyscalls.from_status(c) for c in containers if isinstance(c, dict))
                   if isinstance(containers, list) else ())


def _order(container: ContainerSyscalls) -> tuple[str, str]:
    return container.pod_uid, container.container_id


def spec_pods(report: Object) -> dict[str, str]:
    """``spec.pods`` of a RecordingReport object: pod UID -> pod name."""
    pods: Iterable[object] = (report.get("spec") or {}).get("pods") or []
    return {str(p["uid"]): str(p.get("name", "")) for p in pods if isinstance(p, dict) and "uid" in p}
