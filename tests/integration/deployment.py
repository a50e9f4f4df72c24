"""What the deploy suites share: rendered manifests applied for real and removed again, one object of them, and
the log lines that show a permission was missing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devtools import install
from devtools.cluster import DevCluster
from secprofiles.resources import object_path

FORBIDDEN_MARKERS = ("forbidden", "Forbidden", "Not enough permissions")
#: Removed after a suite: the other suites of the session use the agent's service account with unbound tokens,
#: which the policies would rightly refuse, and the webhook points at a Service the dev cluster cannot route to.
_REMOVED_KINDS = ("ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicy", "Deployment", "DaemonSet",
                  "MutatingWebhookConfiguration")


@contextmanager
def applied(devcluster: DevCluster, rendered: list[dict[str, Any]]) -> Iterator[DevCluster]:
    """``rendered`` server-side applied for real; policies, workloads and the webhook removed afterwards."""
    devcluster.admin.call(install.apply, rendered)
    yield devcluster
    for obj in rendered:
        if obj["kind"] in _REMOVED_KINDS:
            devcluster.admin.delete(object_path(obj))


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The rendered object of ``kind`` named ``name``."""
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def forbidden_lines(log: Path) -> list[str]:
    """Lines of a component's log that report a refused API call."""
    return [line for line in log.read_text(errors="replace").splitlines()
            if any(marker in line for marker in FORBIDDEN_MARKERS)]
