"""``secprofiles import``: existing profiles (Docker/OCI seccomp JSON, AppArmor files) to CR objects."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from secprofiles.model import apparmor, schema, syscalls
from secprofiles.objects import Object

# What containerd and Docker grant a container by default (Kubernetes nodes run containerd).
DEFAULT_CAPABILITIES = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                        "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")
_HEADER = re.compile(
    r"^(?P<indent>\s*)(?:profile\s+(?P<name>\"[^\"]*\"|[^\s{]+)(?:\s+(?P<attach>(?!flags\b)[^\s{]+))?|(?P<path>/[^\s{]*))"
    r"(?:\s+flags\s*=\s*\((?P<flags>[^)]*)\))?\s*\{\s*$",
    re.MULTILINE,
)


@dataclass
class Imported:
    """The object, plus what the import changed that a person should know."""

    obj: Object
    notes: list[str] = field(default_factory=list)


class UnsupportedInputError(ValueError):
    """The input is not a profile this command can import."""


def detect(text: str) -> str:
    """``seccomp`` for JSON input, ``apparmor`` otherwise."""
    return "seccomp" if text.lstrip().startswith("{") else "apparmor"


def dns_name(text: str) -> str:
    """A Kubernetes object name derived from a file or profile name."""
    name = re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.")
    return name[:200] or "imported"


def import_seccomp(text: str, name: str, namespace: str | None, arch: str,
                   capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES) -> Imported:
    """A SeccompProfile from OCI or Docker seccomp JSON, resolved for ``arch`` and ``capabilities``.

    Handles the legacy single ``name``, ``names``, ``archMap``, ``includes``/``excludes`` (by arch and
    capability; ``minKernel`` is assumed met) and drops ``comment`` fields and names that are not a
    syscall on the target architectures. A syscall listed in several rules without arguments keeps the
    last rule's action, so the result has one action per syscall.
    """
    try:
        source = json.loads(text)
    except json.JSONDecodeError as error:
        raise UnsupportedInputError(f"not valid JSON: {error.msg} at line {error.lineno}") from None
    if not isinstance(source, dict) or "defaultAction" not in source:
        raise UnsupportedInputError("not a seccomp profile: no defaultAction")
    go_arch = next((g for g, o in syscalls.GO_ARCH_TO_OCI.items() if o == arch), arch)
    granted = {c.upper() if c.upper().startswith("CAP_") else "CAP_" + c.upper() for c in capabilities}
    notes: list[str] = []

    spec: dict[str, Any] = {"defaultAction": source["defaultAction"]}
    if "defaultErrnoRet" in source:
        spec["defaultErrnoRet"] = source["defaultErrnoRet"]
    architectures = list(source.get("architectures", []))
    for entry in source.get("archMap") or []:
        if entry.get("architecture") == arch:
            architectures = [arch, *entry.get("subArchitectures", [])]
    if source.get("archMap") and not architectures:
        notes.append(f"archMap has no entry for {arch}; architectures left unset (the node's own)")
    if architectures:
        spec["architectures"] = sorted(set(architectures))
    if source.get("flags"):
        spec["flags"] = list(source["flags"])

    rules: list[dict[str, Any]] = []
    dropped: set[str] = set()
    for entry in source.get("syscalls") or []:
        includes, excludes = entry.get("includes") or {}, entry.get("excludes") or {}
        if includes.get("arches") and go_arch not in includes["arches"]:
            continue
        if excludes.get("arches") and go_arch in excludes["arches"]:
            continue
        if includes.get("caps") and not set(includes["caps"]) <= granted:
            continue
        if excludes.get("caps") and set(excludes["caps"]) & granted:
            continue
        names = list(entry.get("names") or ([entry["name"]] if entry.get("name") else []))
        kept = [n for n in names if syscalls.is_known(n, spec.get("architectures", []))]
        dropped |= set(names) - set(kept)
        if not kept:
            continue
        rule: dict[str, Any] = {"names": kept, "action": entry["action"]}
        if entry.get("errnoRet") is not None:
            rule["errnoRet"] = entry["errnoRet"]
        if entry.get("args"):
            rule["args"] = [{k: a[k] for k in ("index", "value", "valueTwo", "op") if k in a} for a in entry["args"]]
            for arg in rule["args"]:
                if not arg.get("valueTwo"):
                    arg.pop("valueTwo", None)
        if not rule.get("args"):
            # The profile's intent: a later, capability-specific rule overrides an earlier general one.
            overridden = set(kept)
            for earlier in rules:
                if not earlier.get("args"):
                    earlier["names"] = [n for n in earlier["names"] if n not in overridden]
        rules.append(rule)
    rules = [r for r in rules if r["names"]]
    if dropped:
        on = ", ".join(spec.get("architectures", [])) or "any architecture libseccomp knows"
        notes.append(f"dropped names that are not a syscall on {on}: {', '.join(sorted(dropped))}")
    spec["syscalls"] = rules
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    obj = {"apiVersion": schema.API_VERSION, "kind": schema.SECCOMP_PROFILE, "metadata": metadata, "spec": spec}
    return Imported(obj, notes)


def import_apparmor(text: str, name: str | None) -> Imported:
    """An AppArmorProfile from an AppArmor profile file: renamed to the object name, attachment dropped."""
    headers = list(_HEADER.finditer(text))
    if not headers:
        raise UnsupportedInputError("no 'profile NAME {' or '/path {' header found")
    header = headers[0]
    original = (header["name"] or header["path"] or "").strip('"')
    object_name = name or dns_name(original.rsplit("/", 1)[-1])
    notes = []
    flags = [f.strip() for f in (header["flags"] or "").split(",") if f.strip()]
    mode = "complain" if "complain" in flags else "enforce"
    flags = [f for f in flags if f not in ("complain", "enforce")]
    if header["attach"] or header["path"]:
        attachment = header["attach"] or header["path"]
        notes.append(f"dropped the attachment {attachment!r}: pods select the profile by name")
    if original != object_name:
        notes.append(f"renamed profile {original!r} to {object_name!r}")
    new_header = f"{header['indent']}profile {object_name}" + (f" flags=({','.join(flags)})" if flags else "") + " {"
    policy = text[:header.start()] + new_header + text[header.end():]
    policy = policy if policy.endswith("\n") else policy + "\n"
    obj = {"apiVersion": schema.API_VERSION, "kind": schema.APPARMOR_PROFILE, "metadata": {"name": object_name},
           "spec": {"mode": mode, "policy": policy}}
    notes += [str(f) for f in apparmor.check_policy(object_name, policy, mode)]
    return Imported(obj, notes)
