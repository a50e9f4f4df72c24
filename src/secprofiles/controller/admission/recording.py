"""What the webhook does to a new pod a ProfileRecording selects: pure logic, no I/O.

A running recording of the pod's namespace whose ``spec.podSelector`` matches the pod's labels puts every recorded
container (``spec.containers``, all when empty; init containers too) on the recording's logging profile, a
Localhost seccomp profile that logs every syscall, and marks the pod with ``secprofiles.io/recording: <name>``
(how the operator tells which pods a recording has). When several recordings match, the first by name records
it and the others are named in a warning.

Invariants:
- A recorded container keeps no seccomp profile of its own: a Localhost profile it (or its pod) sets is refused,
  naming the field, since recording it would replace the profile the pod asked for; RuntimeDefault or Unconfined
  is replaced, with a warning. Privileged containers run unconfined whatever is set: warned, not recorded.
- The logging profile must be Installed on every node, or the pod is admitted unrecorded with a warning (a
  recording never blocks a workload: its status says why nothing is recorded yet).
- The recording annotation is the webhook's alone: a pod that is not recorded loses one it carries (it could
  otherwise pour other syscalls into a recording's profiles).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from secprofiles.controller.admission.binding import JsonPatch, ProfileInfo, apply_patch, selector_matches
from secprofiles.model import keys
from secprofiles.model.recording import RECORDING_ANNOTATION, Recording
from secprofiles.objects import Object

_CONTAINER_LISTS = ("initContainers", "containers")


@dataclass
class RecordingDecision:
    """The webhook's answer for one pod, as far as recordings go."""

    recording: str | None = None  # the recording that records the pod
    patch: JsonPatch = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rejection: str | None = None
    pod: Object | None = None  # the pod with ``patch`` applied (what the binding decision sees next)


class PodRecorder(Protocol):
    """What the webhook asks of the operator's recordings (``controller.recordings``) for each new pod."""

    def admit(self, pod: Object) -> RecordingDecision: ...


def decide(pod: Object, recordings: Sequence[Recording], profiles: Mapping[str, ProfileInfo]) -> RecordingDecision:
    """Decide whether and how ``pod`` (a CREATE request's object) is recorded.

    ``recordings`` are the running (not ended, valid) recordings of the pod's namespace; ``profiles`` maps profile
    keys to their published status (for the logging profile's).
    """
    meta = pod.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    labels: Mapping[str, str] = meta.get("labels") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    decision = RecordingDecision()
    matching = sorted((r for r in recordings if r.namespace == namespace and selector_matches(r.selector, labels)),
                      key=lambda r: r.name)
    chosen = matching[0] if matching else None
    if chosen is not None:
        decision.warnings += [f"ProfileRecording {other.name} also selects this pod; ProfileRecording {chosen.name} "
                              "records it" for other in matching[1:]]
        info = profiles.get(keys.seccomp_key(namespace, chosen.logging_profile))
        if info is None or not info.ready:
            decision.warnings.append(
                f"ProfileRecording {chosen.name}: its logging profile {chosen.logging_profile} is "
                f"{info.phase if info and info.phase else 'not yet created'}, not Installed on every node; "
                "pod admitted without recording")
            chosen = None
    spec = pod.get("spec") or {}
    contexts: dict[tuple[str, int], Object] = {}
    if chosen is not None:
        wanted = {"type": "Localhost", "localhostProfile": keys.localhost_profile(namespace, chosen.logging_profile)}
        pod_profile = (spec.get("securityContext") or {}).get("seccompProfile")
        for list_name, index, container in _containers(spec):
            name = str(container.get("name", ""))
            if not chosen.records_container(name):
                continue
            context = dict(container.get("securityContext") or {})
            if context.get("privileged"):
                decision.warnings.append(f"ProfileRecording {chosen.name}: container {name} is privileged and runs "
                                         "without seccomp; it is not recorded")
                continue
            own, where = context.get("seccompProfile"), f"spec.{list_name}[{index}].securityContext.seccompProfile"
            if own is None:
                own, where = pod_profile, "spec.securityContext.seccompProfile"
            if own is not None and dict(own) != wanted:
                if own.get("type") == "Localhost":
                    decision.rejection = (f"{where}: ProfileRecording {chosen.name} records container {name}, which "
                                          f"sets its own Localhost seccomp profile {own.get('localhostProfile')!r}; "
                                          "remove it while the recording runs, or change the recording's "
                                          "spec.podSelector or spec.containers")
                    return decision
                decision.warnings.append(f"ProfileRecording {chosen.name}: container {name}'s seccomp profile "
                                         f"{own.get('type')} replaced by the recording's logging profile")
            contexts[(list_name, index)] = {**context, "seccompProfile": wanted}
    recording = chosen.name if chosen is not None and contexts else None
    ops: JsonPatch = [{"op": "add", "path": f"/spec/{list_name}/{index}/securityContext", "value": context}
                      for (list_name, index), context in sorted(contexts.items())
                      if context != (spec[list_name][index].get("securityContext") or {})]
    if recording is not None and annotations.get(RECORDING_ANNOTATION) != recording:
        if "annotations" in meta:
            ops.append({"op": "add", "path": f"/metadata/annotations/{_escape(RECORDING_ANNOTATION)}",
                        "value": recording})
        else:
            ops.append({"op": "add", "path": "/metadata/annotations", "value": {RECORDING_ANNOTATION: recording}})
    elif recording is None and RECORDING_ANNOTATION in annotations:
        ops.append({"op": "remove", "path": f"/metadata/annotations/{_escape(RECORDING_ANNOTATION)}"})
    decision.recording, decision.patch = recording, ops
    if ops:
        decision.pod = copy.deepcopy(pod)
        apply_patch(decision.pod, ops)
    return decision


def _containers(spec: Object) -> Iterator[tuple[str, int, Object]]:
    for list_name in _CONTAINER_LISTS:
        for index, container in enumerate(spec.get(list_name) or []):
            yield list_name, index, container


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
