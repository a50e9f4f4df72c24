"""Profile keys: the one way every component names a profile.

``seccomp/<namespace>/<name>`` for a SeccompProfile and ``apparmor/<name>`` for an AppArmorProfile (cluster-scoped).
Keys index NodeProfileStatus entries, the operator's state, pod references and bindings. A seccomp profile's node
file is ``<kubelet root>/seccomp/<localhost profile>``, and pods name it by that localhost profile
(``secprofiles/<namespace>/<name>.json``), which maps back to the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from secprofiles.model.schema import SECCOMP_PROFILE

SECCOMP, APPARMOR = "seccomp", "apparmor"
#: The directory under ``<kubelet root>/seccomp`` that holds every secprofiles file, and nothing else's.
NODE_SUBDIR = "secprofiles"


def seccomp_key(namespace: str, name: str) -> str:
    """Key of a SeccompProfile."""
    return f"{SECCOMP}/{namespace}/{name}"


def apparmor_key(name: str) -> str:
    """Key of an AppArmorProfile."""
    return f"{APPARMOR}/{name}"


def profile_key(kind: str, namespace: str, name: str) -> str:
    """Key of a profile of ``kind`` named from ``namespace`` (an AppArmorProfile is the same from everywhere)."""
    return seccomp_key(namespace, name) if kind == SECCOMP_PROFILE else apparmor_key(name)


def key_of(obj: Mapping[str, Any]) -> str:
    """Key of a profile object of either kind."""
    meta = obj["metadata"]
    return profile_key(obj["kind"], meta.get("namespace", ""), meta["name"])


def parse_key(key: str) -> tuple[str, str, str]:
    """``seccomp/<ns>/<name>`` -> ("seccomp", ns, name); ``apparmor/<name>`` -> ("apparmor", "", name)."""
    kind, _, rest = key.partition("/")
    if kind == SECCOMP:
        namespace, _, name = rest.partition("/")
        return kind, namespace, name
    return kind, "", rest


def localhost_profile(namespace: str, name: str) -> str:
    """A SeccompProfile's ``localhostProfile``: ``secprofiles/<namespace>/<name>.json``, relative to
    ``<kubelet root>/seccomp``."""
    return f"{NODE_SUBDIR}/{namespace}/{name}.json"


def key_of_localhost_profile(path: str) -> str | None:
    """The key of the SeccompProfile a pod's ``localhostProfile`` names, or None for files secprofiles does not
    write."""
    if not path.startswith(NODE_SUBDIR + "/") or not path.endswith(".json"):
        return None
    parts = path.removesuffix(".json").split("/")
    return seccomp_key(parts[1], parts[2]) if len(parts) == 3 and all(parts) else None
