"""Which profiles a pod references: seccomp and AppArmor, pod, container and init container level.

The operator keeps only these keys per pod (never pod objects), so memory stays bounded in large clusters.
"""

from __future__ import annotations

from typing import Any

from secprofiles.model.keys import apparmor_key, key_of_localhost_profile

APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")


def _seccomp_key(context: dict[str, Any] | None) -> str | None:
    profile = (context or {}).get("seccompProfile") or {}
    if profile.get("type") != "Localhost":
        return None
    return key_of_localhost_profile(profile.get("localhostProfile") or "")


def _apparmor_key(context: dict[str, Any] | None) -> str | None:
    profile = (context or {}).get("appArmorProfile") or {}
    if profile.get("type") == "Localhost" and profile.get("localhostProfile"):
        return apparmor_key(profile["localhostProfile"])
    return None


def references(pod: dict[str, Any]) -> frozenset[str]:
    """Keys (``seccomp/<ns>/<name>``, ``apparmor/<name>``) of every secprofiles profile the pod may use."""
    spec = pod.get("spec") or {}
    contexts = [spec.get("securityContext")]
    for list_name in _CONTAINER_LISTS:
        contexts += [c.get("securityContext") for c in spec.get(list_name) or []]
    keys = {key for context in contexts for key in (_seccomp_key(context), _apparmor_key(context)) if key}
    for annotation, value in ((pod.get("metadata") or {}).get("annotations") or {}).items():
        if annotation.startswith(APPARMOR_ANNOTATION_PREFIX) and value.startswith("localhost/"):
            keys.add(apparmor_key(value.removeprefix("localhost/")))
    return frozenset(keys)
