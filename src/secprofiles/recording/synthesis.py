"""The SeccompProfile objects recording makes: the result of a recording, and the logging profile recorded pods run
under. Pure and deterministic.

A result denies by default (``SCMP_ACT_ERRNO``, EPERM unless ``errno_ret`` says otherwise; or
``SCMP_ACT_KILL_PROCESS``) and allows, in a first rule, exactly the recorded names; a second rule allows what the
container runtime itself does after it installed the filter (``runtime_syscalls``), minus the recorded names, so a
reader can tell the two apart and the profile lets the same program start in a container.

Invariants:
- Same inputs, same object: names sorted and unique, architectures sorted, fixed key order.
- Only names libseccomp knows reach the profile (recorders resolve numbers with libseccomp); an empty recording is
  refused (``SynthesisError`` naming the field), never written as a profile that allows nothing.
- Annotations say how the profile was made; the object carries no status and no owner (GitOps-friendly).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from secprofiles.model import schema
from secprofiles.objects import Object

DEFAULT_ACTIONS = ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS")
RECORDED_BY = "secprofiles.io/recorded-by"
RECORDED_FROM = "secprofiles.io/recorded-from"
RUNTIME_ANNOTATION = "secprofiles.io/runtime-syscalls"


class SynthesisError(ValueError):
    """Input that cannot make a profile; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


def synthesize(name: str, recorded: Iterable[str], architectures: Iterable[str], *,
               namespace: str | None = None, default_action: str = "SCMP_ACT_ERRNO", errno_ret: int | None = None,
               runtime: tuple[str, Iterable[str]] | None = None,
               annotations: Mapping[str, str] | None = None) -> Object:
    """The SeccompProfile for ``recorded`` names; ``runtime`` is (its label, the runtime's post-filter names)."""
    if default_action not in DEFAULT_ACTIONS:
        raise SynthesisError("spec.defaultAction", f"{default_action!r} is not one of {', '.join(DEFAULT_ACTIONS)}")
    if errno_ret is not None and (default_action != "SCMP_ACT_ERRNO" or not 0 <= errno_ret <= 4095):
        raise SynthesisError("spec.defaultErrnoRet", "only with SCMP_ACT_ERRNO, and 0-4095")
    names = sorted(set(recorded))
    if not names:
        raise SynthesisError("spec.syscalls", "nothing was recorded: a profile that allows no syscall is not written")
    all_annotations = dict(annotations or {})
    rules: list[Object] = [{"names": names, "action": "SCMP_ACT_ALLOW"}]
    if runtime is not None:
        label, runtime_names = runtime
        extra = sorted(set(runtime_names) - set(names))
        all_annotations[RUNTIME_ANNOTATION] = label
        if extra:
            rules.append({"names": extra, "action": "SCMP_ACT_ALLOW"})
    spec: Object = {"defaultAction": default_action}
    if errno_ret is not None:
        spec["defaultErrnoRet"] = errno_ret
    spec["architectures"] = _architectures(architectures)
    spec["syscalls"] = rules
    return _profile(name, namespace, all_annotations, spec)


def logging_profile(name: str, namespace: str, architectures: Iterable[str],
                    annotations: Mapping[str, str] | None = None) -> Object:
    """The profile recorded containers run under: every syscall allowed and logged (``SCMP_ACT_LOG``), on every
    architecture given (a 32-bit program would otherwise be killed as a "bad architecture")."""
    spec = {"defaultAction": "SCMP_ACT_LOG", "architectures": _architectures(architectures)}
    return _profile(name, namespace, dict(annotations or {}), spec)


def _architectures(architectures: Iterable[str]) -> list[str]:
    arches = sorted(set(architectures))
    if not arches:
        raise SynthesisError("spec.architectures", "no architecture given")
    return arches


def _profile(name: str, namespace: str | None, annotations: Mapping[str, str], spec: Object) -> Object:
    metadata: Object = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if annotations:
        metadata["annotations"] = dict(sorted(annotations.items()))
    return {"apiVersion": schema.API_VERSION, "kind": schema.SECCOMP_PROFILE, "metadata": metadata, "spec": spec}
