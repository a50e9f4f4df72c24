"""Which container (and Kubernetes pod) a process belongs to, from the text of ``/proc/<pid>/cgroup``.

Pure. The container id is the last path component holding a 64-hex id, in any of the forms runtimes use:
``.../libpod-<id>`` (podman, cgroupfs), ``.../pod<uid>/<id>`` (kubelet cgroupfs driver + containerd or CRI-O),
``.../cri-containerd-<id>.scope`` / ``crio-<id>.scope`` / ``docker-<id>.scope`` (systemd driver),
``/docker/<id>``. The pod UID is the ``pod<uid>`` component (dashes, or underscores under the systemd driver).

Invariants:
- Every hierarchy line is read (hybrid cgroups: v1 controllers plus the unified line); lines that name a
  container must all name the same one, otherwise the answer is ``AmbiguousCgroup`` (never a guess).
- A process in no container yields ``None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CONTAINER = re.compile(r"(?:^|[-_:])([0-9a-f]{64})(?:\.scope)?$")
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$")


@dataclass(frozen=True, slots=True, order=True)
class ContainerIdentity:
    container_id: str
    pod_uid: str | None = None


class AmbiguousCgroup(ValueError):
    """The hierarchies of one process name different containers."""


def container_of(cgroup_text: str) -> ContainerIdentity | None:
    """The container a ``/proc/<pid>/cgroup`` text places its process in, None when it is in none."""
    found: set[ContainerIdentity] = set()
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        identity = _identity_of_path(parts[2])
        if identity is not None:
            found.add(identity)
    if len(found) > 1:
        raise AmbiguousCgroup(f"hierarchies name different containers: {sorted(i.container_id for i in found)}")
    return found.pop() if found else None


def _identity_of_path(path: str) -> ContainerIdentity | None:
    components = [c for c in path.split("/") if c]
    for index in range(len(components) - 1, -1, -1):
        match = _CONTAINER.search(components[index])
        if match is None:
            continue
        pod = None
        for component in reversed(components[:index]):
            pod_match = _POD.search(component)
            if pod_match:
                pod = pod_match.group(1).replace("_", "-")
                break
        return ContainerIdentity(match.group(1), pod)
    return None
