"""ProfileRecording: what a recording asks for, the checks beyond its schema, when it ends, and the names of the
profiles it makes.

A recording selects pods of its namespace; the webhook puts their containers on the recording's *logging profile*
(a SeccompProfile ``<recording>.log`` with ``defaultAction: SCMP_ACT_LOG``) and marks each such pod with the
annotation ``secprofiles.io/recording: <recording>``. It ends when it is deleted, ``spec.stop`` is set, or
``spec.durationSeconds`` after its creation; then one SeccompProfile per container name (``<recording>-<container>``)
or per pod and container (``<recording>-<pod>-<container>``) is written.

Invariants:
- Every name derived here is a valid object name (a DNS-1123 subdomain of at most 253 characters), deterministic,
  and a result can never be named like a logging profile (container names hold no dot, ``.log`` does).
- ``validate`` names the field of every problem, like the rest of the model; a valid recording's derived names
  all fit (the recording's own name is limited so that ``<recording>-<63-character container>`` does).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from secprofiles.model import schema
from secprofiles.model.findings import Finding
from secprofiles.objects import Object

BY_CONTAINER_NAME, BY_POD = "ByContainerName", "ByPod"
#: On a pod the webhook put on a recording's logging profile: the recording's name.
RECORDING_ANNOTATION = "secprofiles.io/recording"
LOG_SUFFIX = ".log"
MAX_NAME = 253
MAX_RECORDING_NAME = MAX_NAME - 1 - 63  # room for "-<container name>"
_HASHED = 12  # hex characters of a hash standing for a pod name that does not fit


@dataclass(frozen=True)
class Recording:
    """A ProfileRecording, slimmed down (defaults as in the CRD, for objects that bypassed defaulting)."""

    namespace: str
    name: str
    uid: str
    selector: Object
    containers: tuple[str, ...]
    merge_strategy: str
    default_action: str
    stop: bool
    duration_seconds: int | None
    created: dt.datetime | None
    deleting: bool

    @classmethod
    def from_object(cls, obj: Object) -> Recording:
        """From a ProfileRecording object."""
        meta, spec = obj["metadata"], obj.get("spec") or {}
        created = meta.get("creationTimestamp")
        return cls(namespace=meta["namespace"], name=meta["name"], uid=meta.get("uid", ""),
                   selector=dict(spec.get("podSelector") or {}), containers=tuple(spec.get("containers") or ()),
                   merge_strategy=spec.get("mergeStrategy") or BY_CONTAINER_NAME,
                   default_action=spec.get("defaultAction") or "SCMP_ACT_ERRNO", stop=bool(spec.get("stop")),
                   duration_seconds=spec.get("durationSeconds"),
                   created=dt.datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None,
                   deleting="deletionTimestamp" in meta)

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def deadline(self) -> dt.datetime | None:
        """When ``spec.durationSeconds`` ends it, if set."""
        if self.duration_seconds is None or self.created is None:
            return None
        return self.created + dt.timedelta(seconds=self.duration_seconds)

    def ended(self, now: dt.datetime) -> str | None:
        """Why the recording has ended (the field that ended it), or None while it runs."""
        if self.deleting:
            return "deleted"
        if self.stop:
            return "spec.stop"
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            return "spec.durationSeconds"
        return None

    @property
    def logging_profile(self) -> str:
        """Name of the SeccompProfile (in the recording's namespace) recorded containers run under."""
        return self.name + LOG_SUFFIX

    def records_container(self, container: str) -> bool:
        """Whether a container of a selected pod is recorded (``spec.containers``, every one when empty)."""
        return not self.containers or container in self.containers

    def profile_name(self, container: str, pod: str | None = None) -> str:
        """The written profile's name: per container name, or (``ByPod``) per pod and container."""
        if self.merge_strategy != BY_POD or pod is None:
            return f"{self.name}-{container}"
        name = f"{self.name}-{pod}-{container}"
        if len(name) <= MAX_NAME:
            return name
        digest = hashlib.sha256(pod.encode()).hexdigest()[:_HASHED]
        return f"{self.name}-{digest}-{container}"


def validate(obj: Object) -> list[Finding]:
    """The schema's findings, then what the schema cannot say, each naming its field."""
    findings = schema.validate(obj)
    if findings:
        return findings
    meta, spec = obj["metadata"], obj["spec"]
    if len(meta["name"]) > MAX_RECORDING_NAME:
        findings.append(Finding("metadata.name", f"at most {MAX_RECORDING_NAME} characters: the profiles it writes "
                                                 "are named <recording>-<container name>"))
    selector: Mapping[str, object] = spec["podSelector"]
    expressions = selector.get("matchExpressions") or []
    if not selector.get("matchLabels") and not expressions:
        findings.append(Finding("spec.podSelector", "must select by at least one label (an empty selector would "
                                                    "record every new pod of the namespace)"))
    for index, expression in enumerate(expressions if isinstance(expressions, list) else []):
        operator, values = expression["operator"], expression.get("values") or []
        where = f"spec.podSelector.matchExpressions[{index}].values"
        if operator in ("In", "NotIn") and not values:
            findings.append(Finding(where, f"required for operator {operator}"))
        elif operator in ("Exists", "DoesNotExist") and values:
            findings.append(Finding(where, f"must be empty for operator {operator}"))
    seen: set[str] = set()
    for index, container in enumerate(spec.get("containers") or []):
        if container in seen:
            findings.append(Finding(f"spec.containers[{index}]", f"duplicate container name {container!r}"))
        seen.add(container)
    return findings
