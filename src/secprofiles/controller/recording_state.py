"""What the operator knows of ProfileRecordings, and what to do about each: pure and synchronous.

Watch events of ProfileRecordings, RecordingReports, Pods (only in namespaces that have recordings) and Nodes update
a ``RecordingState``; each ``apply_*`` returns the recordings (``namespace/name``) that may need work. ``plan``
turns one recording into what the writer must do next: keep it running (its logging profile, one report spec per
node with recorded pods, its status), wait for the nodes' final reports, or finish (the profiles to write and the
final status), so every decision is unit-tested without an API server.

Invariants:
- Memory is bounded by what recordings select: pods are kept only when they match a recording's selector or were
  put on its logging profile (the webhook's ``secprofiles.io/recording`` annotation), never every pod of the
  cluster; node reports hold syscall sets, not events.
- Nothing partial is ever written: a node that could not record (``status.error``), dropped records
  (``status.incomplete``) or sent no final report within ``GRACE`` seconds makes the recording ``Error``, and an
  empty recording writes no profile; the status says why, naming the node.
- Container names come from the pods' status (the kubelet reports each container's id from the CRI): a recorded
  pod keeps every container id it ever had until its recording finished, so a container that restarted or a pod
  deleted before the end still maps to its name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from secprofiles.controller.admission.binding import ProfileInfo, selector_matches
from secprofiles.model import keys, schema
from secprofiles.model.findings import Finding
from secprofiles.model.recording import BY_POD, LOG_SUFFIX, RECORDING_ANNOTATION, Recording, validate
from secprofiles.model.syscalls import GO_ARCH_TO_OCI, native_architecture, node_architectures
from secprofiles.objects import Object
from secprofiles.recording.report import NodeReport, spec_pods
from secprofiles.recording.runtime_syscalls import runtime_syscalls
from secprofiles.recording.synthesis import RECORDED_BY, RECORDED_FROM, logging_profile, synthesize

GRACE = 30.0  # seconds a recording that ended waits for its nodes' final reports
FINALIZER = "secprofiles.io/recording"
PENDING, RECORDING, STOPPING, COMPLETED, ERROR = "Pending", "Recording", "Stopping", "Completed", "Error"
MAX_LISTED = 20  # pod names in the status
MAX_NODES = 100  # nodes in the status
MAX_MESSAGE = 1024


@dataclass
class RecordedPod:
    """A pod the webhook put on a recording's logging profile."""

    name: str
    node: str | None
    containers: dict[str, str] = field(default_factory=dict)  # container id -> container name, every id it had
    deleted: bool = False


@dataclass(frozen=True)
class ReportView:
    """One node's RecordingReport, as last seen."""

    pods: Mapping[str, str]
    stop: bool
    node: NodeReport


@dataclass
class Entry:
    """One ProfileRecording and what belongs to it."""

    recording: Recording
    obj: Object
    findings: tuple[Finding, ...]
    matching: set[str] = field(default_factory=set)  # names of the namespace's pods its selector matches
    pods: dict[str, RecordedPod] = field(default_factory=dict)  # by pod UID
    reports: dict[str, ReportView] = field(default_factory=dict)  # by node
    log_profile_ours: bool | None = None  # None: absent; False: a SeccompProfile of that name is someone else's

    @property
    def status(self) -> Object:
        return dict(self.obj.get("status") or {})

    @property
    def finished(self) -> bool:
        """Its final status (Completed or Error, with endTime) is written: nothing more to do. A finished recording
        is not started again (create a new one); only an invalid one is looked at again once its spec changed."""
        status = self.status
        if not status.get("endTime") or status.get("phase") not in (COMPLETED, ERROR):
            return False
        return status.get("reason") != "Invalid" or \
            status.get("observedGeneration") == (self.obj.get("metadata") or {}).get("generation")


@dataclass(frozen=True)
class Running:
    """Keep recording: the logging profile must exist, each node with recorded pods needs its report spec."""

    status: Object
    log_profile: Object
    reports: Mapping[str, Mapping[str, str]]  # node -> recorded pods there (UID -> name)


@dataclass(frozen=True)
class Stopping:
    """It ended: every report gets ``spec.stop``; wait (at most ``wait`` more seconds) for the final reports."""

    status: Object
    wait: float


@dataclass(frozen=True)
class Finish:
    """Write ``profiles`` (none when it failed), delete the logging profile, write ``status`` for good."""

    status: Object
    profiles: tuple[Object, ...]


Plan = Running | Stopping | Finish


@dataclass
class RecordingState:
    """Recordings, their pods and node reports, and the nodes' architectures."""

    entries: dict[str, Entry] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)  # node -> OCI architecture ("" when it says none)

    # -- events --------------------------------------------------------------------------------------------
    def apply_recording(self, event: str, obj: Object) -> set[str]:
        """A ProfileRecording event."""
        recording = Recording.from_object(obj)
        key = recording.key
        if event == "DELETED":
            self.entries.pop(key, None)
            return {key}
        entry = self.entries.get(key)
        if entry is None or entry.recording.uid != recording.uid:
            self.entries[key] = Entry(recording, obj, tuple(validate(obj)))
        else:
            entry.recording, entry.obj, entry.findings = recording, obj, tuple(validate(obj))
        return {key}

    def namespaces(self) -> set[str]:
        """Namespaces that have recordings (the only ones whose pods matter)."""
        return {entry.recording.namespace for entry in self.entries.values()}

    def apply_pod(self, event: str, obj: Object) -> set[str]:
        """A Pod event (pods of namespaces without recordings change nothing)."""
        meta = obj.get("metadata") or {}
        namespace, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
        labels = meta.get("labels") or {}
        marked = (meta.get("annotations") or {}).get(RECORDING_ANNOTATION)
        dirty: set[str] = set()
        for key, entry in self.entries.items():
            recording = entry.recording
            if recording.namespace != namespace:
                continue
            matches = event != "DELETED" and selector_matches(recording.selector, labels)
            if matches != (name in entry.matching):
                (entry.matching.add if matches else entry.matching.discard)(name)
                dirty.add(key)
            if marked != recording.name or not uid:
                continue
            pod = entry.pods.setdefault(uid, RecordedPod(name, None))
            before = (pod.node, dict(pod.containers), pod.deleted)
            pod.node = (obj.get("spec") or {}).get("nodeName") or pod.node
            pod.containers.update(container_ids(obj))
            pod.deleted = pod.deleted or event == "DELETED"
            if (pod.node, pod.containers, pod.deleted) != before:
                dirty.add(key)
        return dirty

    def apply_report(self, event: str, obj: Object) -> set[str]:
        """A RecordingReport event."""
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        key = f"{meta.get('namespace', '')}/{spec.get('recording', '')}"
        entry = self.entries.get(key)
        node = str(spec.get("nodeName", ""))
        if entry is None or not node:
            return set()
        if event == "DELETED":
            entry.reports.pop(node, None)
        else:
            entry.reports[node] = ReportView(spec_pods(obj), bool(spec.get("stop")),
                                             NodeReport.from_status(obj.get("status")))
        return {key}

    def apply_log_profile(self, event: str, obj: Object) -> set[str]:
        """A SeccompProfile event for a profile named like a recording's logging profile: is it the recording's?"""
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        key = f"{meta.get('namespace', '')}/{name.removesuffix(LOG_SUFFIX)}"
        entry = self.entries.get(key)
        if entry is None or not name.endswith(LOG_SUFFIX):
            return set()
        ours = None if event == "DELETED" else \
            (meta.get("annotations") or {}).get(RECORDING_ANNOTATION) == entry.recording.name
        if ours == entry.log_profile_ours:
            return set()
        entry.log_profile_ours = ours
        return {key}

    def apply_node(self, event: str, obj: Object) -> set[str]:
        """A Node event: which nodes exist (a recording does not wait for a gone node) and their architecture."""
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        existed = name in self.nodes
        if event == "DELETED":
            self.nodes.pop(name, None)
        else:
            arch = ((obj.get("status") or {}).get("nodeInfo") or {}).get("architecture") \
                or (meta.get("labels") or {}).get("kubernetes.io/arch") or ""
            self.nodes[name] = GO_ARCH_TO_OCI.get(arch, "")
        if existed == (name in self.nodes):
            return set()
        return {key for key, entry in self.entries.items() if name in entry.reports}

    # -- questions ---------------------------------------------------------------------------------------
    def running_in(self, namespace: str, now: dt.datetime) -> list[Recording]:
        """The recordings of ``namespace`` that record new pods now (valid, not ended)."""
        return [entry.recording for entry in self.entries.values()
                if entry.recording.namespace == namespace and not entry.findings and entry.log_profile_ours
                and entry.recording.ended(now) is None and not entry.finished]

    def architectures(self) -> tuple[str, ...]:
        """Every architecture the cluster's nodes run (with their sub-architectures); this machine's if none."""
        native = {arch for arch in self.nodes.values() if arch} or {native_architecture()}
        return tuple(sorted({sub for arch in native for sub in node_architectures(arch)}))


def container_ids(pod: Object) -> dict[str, str]:
    """Container id -> container name for every container the pod's status names (current and last state)."""
    status = pod.get("status") or {}
    found: dict[str, str] = {}
    for list_name in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(list_name) or []:
            last = ((container.get("lastState") or {}).get("terminated") or {}).get("containerID")
            for raw in (container.get("containerID"), last):
                if raw:
                    found[str(raw).rpartition("://")[2]] = str(container.get("name", ""))
    return found


def plan(entry: Entry, now: dt.datetime, log_profile: ProfileInfo | None, architectures: Iterable[str],
         waited: float, existing_nodes: Iterable[str]) -> Plan:
    """What to do next for one recording (not ``finished``).

    ``log_profile`` is the published status of its logging profile; ``architectures`` those of the cluster's
    nodes (for the logging profile); ``waited`` how long ago the writer first saw it ended (0 while it runs).
    """
    recording = entry.recording
    base = _common_status(entry)
    if entry.findings:
        return Finish(_final(base, ERROR, "Invalid", "; ".join(str(f) for f in entry.findings), now), ())
    why = recording.ended(now)
    if why is None:
        return Running(_running_status(entry, base, log_profile), _log_profile(recording, architectures),
                       _recorded_by_node(entry))
    nodes = set(existing_nodes)
    waiting = sorted(node for node, report in entry.reports.items()
                     if node in nodes and not report.node.final and not report.node.error)
    if waiting and waited < GRACE:
        return Stopping(_status(base, STOPPING, "WaitingForNodes",
                                f"ended by {why}; waiting for the final report of node(s) {', '.join(waiting[:10])} "
                                f"(at most {GRACE:.0f} s)"), GRACE - waited)
    return _finish(entry, base, why, waiting, now)


def _finish(entry: Entry, base: Object, why: str, silent: list[str], now: dt.datetime) -> Finish:
    errors = sorted((node, r.node.error) for node, r in entry.reports.items() if r.node.error)
    if errors:
        node, error = errors[0]
        return Finish(_final(base, ERROR, "RecorderError", f"node {node} could not record: {error}"
                             f"{_more(errors)}; nothing written", now), ())
    if silent:
        return Finish(_final(base, ERROR, "Incomplete", f"node(s) {', '.join(silent[:10])} sent no final report "
                             f"within {GRACE:.0f} s of the end ({why}); nothing written", now), ())
    incomplete = sorted((node, r.node.incomplete) for node, r in entry.reports.items() if r.node.incomplete)
    if incomplete:
        node, reason = incomplete[0]
        return Finish(_final(base, ERROR, "Incomplete", f"node {node}: {reason}{_more(incomplete)}; nothing "
                             "written", now), ())
    profiles = tuple(_profiles(entry))
    if not profiles:
        if not entry.pods:
            message = (f"the recording ended ({why}) before any selected pod was created: no profile written "
                       "(only pods created while it runs are recorded)")
        else:
            message = (f"{len(entry.pods)} pod(s) were put on the logging profile, but no node reported a syscall "
                       f"of their containers before the end ({why}): no profile written")
        return Finish(_final(base, ERROR, "NothingRecorded", message, now), ())
    names = [p["metadata"]["name"] for p in profiles]
    message = f"ended by {why}; wrote {len(names)} SeccompProfile(s): {', '.join(names[:20])}"
    unattributed = sorted(node for node, r in entry.reports.items() if r.node.unattributed_records)
    if unattributed:
        message += (f"; on node(s) {', '.join(unattributed[:10])} logged syscalls of processes that were gone before "
                    "they could be attributed to a container were seen (status.nodes): if a recorded container "
                    "lived only briefly, its profile may miss some")
    final = _final(base, COMPLETED, "ProfilesWritten", message, now)
    final["profiles"] = names
    return Finish(final, profiles)


def _profiles(entry: Entry) -> list[Object]:
    """One profile per container name (or pod and container), merged over every report."""
    recording = entry.recording
    groups: dict[str, tuple[set[str], set[str], set[str]]] = {}  # name -> (syscalls, architectures, runtimes)
    for report in entry.reports.values():
        for container in report.node.containers:
            pod = entry.pods.get(container.pod_uid)
            name = pod.containers.get(container.container_id) if pod else None
            if pod is None or name is None or not recording.records_container(name):
                continue  # a sandbox (pause) container, or one the recording does not ask for
            profile = recording.profile_name(name, pod.name if recording.merge_strategy == BY_POD else None)
            syscalls, architectures, runtimes = groups.setdefault(profile, (set(), set(), set()))
            for arch, names in container.syscalls.items():
                syscalls.update(names)
                architectures.add(arch)
            architectures.update(report.node.architectures)
            if container.runtime:
                runtimes.add(container.runtime)
    profiles = []
    for name, (syscalls, architectures, runtimes) in sorted(groups.items()):
        if not syscalls:
            continue
        runtime = (",".join(sorted(runtimes)), [s for label in sorted(runtimes) for s in runtime_syscalls(label)]) \
            if runtimes else None
        profiles.append(synthesize(name, syscalls, architectures, namespace=recording.namespace,
                                   default_action=recording.default_action, runtime=runtime,
                                   annotations={RECORDED_BY: schema.PROFILE_RECORDING, RECORDED_FROM: recording.name}))
    return profiles


def _recorded_by_node(entry: Entry) -> dict[str, dict[str, str]]:
    by_node: dict[str, dict[str, str]] = {}
    for uid, pod in entry.pods.items():
        if pod.node:
            by_node.setdefault(pod.node, {})[uid] = pod.name
    return by_node


def _log_profile(recording: Recording, architectures: Iterable[str]) -> Object:
    return logging_profile(recording.logging_profile, recording.namespace, architectures,
                           annotations={RECORDING_ANNOTATION: recording.name})


def _running_status(entry: Entry, base: Object, log_profile: ProfileInfo | None) -> Object:
    recording = entry.recording
    errors = sorted((node, r.node.error) for node, r in entry.reports.items() if r.node.error)
    if errors:
        node, error = errors[0]
        return _status(base, ERROR, "RecorderError", f"node {node} cannot record: {error}{_more(errors)}; nothing "
                                                     "will be written unless it is fixed and the pods restarted")
    if entry.log_profile_ours is False:
        return _status(base, ERROR, "ProfileConflict",
                       f"a SeccompProfile named {recording.logging_profile} exists and is not this recording's "
                       "logging profile: no pod is recorded until it is renamed or deleted")
    waiting = None
    if log_profile is None or not log_profile.ready:
        state = log_profile.phase if log_profile and log_profile.phase else "not yet created"
        waiting = (f"logging profile {recording.logging_profile} is {state}: new pods are admitted without "
                   "recording until it is Installed on every node")
    if entry.pods:
        nodes = {pod.node for pod in entry.pods.values() if pod.node}
        message = f"recording {len(entry.pods)} pod(s) on {len(nodes)} node(s)"
        return _status(base, RECORDING, "Recording", f"{message}; {waiting}" if waiting else message)
    if waiting:
        return _status(base, PENDING, "WaitingForProfile", waiting)
    if not entry.matching:
        return _status(base, PENDING, "NoMatchingPods",
                       f"no pod in namespace {recording.namespace} matches spec.podSelector; pods created while "
                       "the recording runs are recorded")
    return _status(base, PENDING, "WaitingForPods",
                   f"{len(entry.matching)} pod(s) match spec.podSelector but were created before the recording "
                   "(only new pods are recorded: restart them)")


def _common_status(entry: Entry) -> Object:
    recording = entry.recording
    names: set[str] = set()
    nodes: list[Object] = []
    for node, report in sorted(entry.reports.items()):
        counts: dict[str, set[str]] = {}
        for container in report.node.containers:
            pod = entry.pods.get(container.pod_uid)
            name = pod.containers.get(container.container_id) if pod else None
            if name is not None and recording.records_container(name):
                counts.setdefault(name, set()).update(n for ns in container.syscalls.values() for n in ns)
        names.update(counts)
        item: Object = {"name": node, "pods": len(report.pods), "final": report.node.final,
                        "syscalls": {name: len(found) for name, found in sorted(counts.items())}}
        if report.node.error:
            item["error"] = report.node.error[:MAX_MESSAGE]
        if report.node.unattributed_records:
            item["unattributedRecords"] = report.node.unattributed_records
        nodes.append(item)
    return {"observedGeneration": (entry.obj.get("metadata") or {}).get("generation"),
            "recordingProfile": keys.localhost_profile(recording.namespace, recording.logging_profile),
            "pods": len(entry.pods), "podNames": sorted(p.name for p in entry.pods.values())[:MAX_LISTED],
            "containers": sorted(names)[:64], "nodes": nodes[:MAX_NODES]}


def _status(base: Object, phase: str, reason: str, message: str) -> Object:
    return {**base, "phase": phase, "reason": reason, "message": message[:MAX_MESSAGE]}


def _final(base: Object, phase: str, reason: str, message: str, now: dt.datetime) -> Object:
    return {**_status(base, phase, reason, message), "endTime": now.strftime("%Y-%m-%dT%H:%M:%SZ")}


def _more(items: list[tuple[str, str]]) -> str:
    return f" (and {len(items) - 1} more node(s))" if len(items) > 1 else ""
