"""Migration from the Security Profiles Operator (SPO): its custom resources to this project's.

Reads SeccompProfile, AppArmorProfile (raw ``policy`` of v1alpha1 and the structured ``abstract`` of v1) and
ProfileBinding of ``security-profiles-operator.x-k8s.io`` (v1alpha1, v1beta1, v1) and SeccompProfile of the
pre-rename ``seccomp-operator.x-k8s.io/v1alpha1``. Pure: text in, objects and notes out.

Invariant: nothing is dropped silently. Every field of theirs is either mapped, or named in a note saying
what happened to it (``spec.targetWorkload: …``); an object that cannot be mapped at all is named with the
reason and not written. Where their meaning is narrower than anything of ours (a write-only path, TCP-only
networking), the mapping widens it and the note says so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml

from secprofiles.cli import importer
from secprofiles.model import apparmor, schema, syscalls
from secprofiles.model.findings import field_path

GROUPS = ("security-profiles-operator.x-k8s.io", "seccomp-operator.x-k8s.io")
VERSIONS = ("v1alpha1", "v1beta1", "v1")
SPO_LABEL_PREFIX = "spo.x-k8s.io/"
Object = dict[str, Any]


@dataclass
class Migration:
    """What one SPO file gave: our objects (each with its notes) and what could not be written at all."""

    imported: list[importer.Imported] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def is_spo(obj: Any) -> bool:
    """Whether a document is an SPO custom resource (any version, either API group)."""
    return isinstance(obj, dict) and str(obj.get("apiVersion", "")).split("/")[0] in GROUPS


def migrate_text(text: str, namespace: str | None) -> Migration:
    """Every SPO object of a multi-document YAML text; other documents are reported as skipped."""
    migration = Migration()
    for index, obj in enumerate(d for d in yaml.safe_load_all(text) if d is not None):
        where = f"document {index + 1}"
        if not is_spo(obj):
            what = f"{obj.get('apiVersion')} {obj.get('kind')}" if isinstance(obj, dict) else "not an object"
            migration.skipped.append(f"{where}: {what} is not a Security Profiles Operator resource; skipped")
            continue
        label = f"{where}: {obj.get('kind')}/{(obj.get('metadata') or {}).get('name')} ({obj.get('apiVersion')})"
        try:
            migration.imported.append(migrate(obj, namespace))
        except importer.UnsupportedInputError as error:
            migration.skipped.append(f"{label}: {error}")
    return migration


def migrate(obj: Object, namespace: str | None) -> importer.Imported:
    """One SPO object as ours; raises UnsupportedInputError (with the field) when it cannot be mapped."""
    group, _, version = str(obj.get("apiVersion", "")).partition("/")
    if group not in GROUPS or version not in VERSIONS:
        raise importer.UnsupportedInputError(f"apiVersion {obj.get('apiVersion')!r} is not one of SPO's")
    kind = obj.get("kind")
    spec = _mapping(obj.get("spec"))
    notes = [f"migrated from {obj.get('apiVersion')} {kind} {(obj.get('metadata') or {}).get('name')!r}"]
    if obj.get("status"):
        notes.append("status: dropped (the operator writes its own)")
    if kind == "SeccompProfile":
        return _seccomp(obj, spec, namespace, notes)
    if kind == "AppArmorProfile":
        return _apparmor(obj, spec, notes)
    if kind == "ProfileBinding":
        return _binding(obj, spec, namespace, notes)
    raise importer.UnsupportedInputError(f"kind: {kind!r} has no counterpart in secprofiles (SeccompProfile, "
                                         "AppArmorProfile and ProfileBinding are migrated)")


def _mapping(value: Any) -> Object:
    return value if isinstance(value, dict) else {}


def _metadata(obj: Object, namespace: str | None, namespaced: bool, notes: list[str]) -> Object:
    source = _mapping(obj.get("metadata"))
    raw_name = str(source.get("name") or "")
    if not raw_name:
        raise importer.UnsupportedInputError("metadata.name: missing")
    name = importer.dns_name(raw_name)
    if name != raw_name:
        notes.append(f"metadata.name: {raw_name!r} became {name!r} (a DNS-1123 name)")
    metadata: Object = {"name": name}
    theirs = source.get("namespace")
    if namespaced:
        chosen = namespace or theirs
        if not chosen:
            raise importer.UnsupportedInputError("metadata.namespace: the SPO object has none (cluster-scoped "
                                                 "there); choose one with --namespace")
        if theirs and namespace and theirs != namespace:
            notes.append(f"metadata.namespace: {theirs!r} replaced by --namespace {namespace!r}")
        elif not theirs:
            notes.append(f"metadata.namespace: {namespace!r} (from --namespace; the SPO object had none)")
        metadata["namespace"] = chosen
    elif theirs:
        notes.append(f"metadata.namespace: {theirs!r} dropped: AppArmorProfiles are cluster-scoped here (the "
                     "kernel's profile names are node-wide)")
    labels = {k: v for k, v in (source.get("labels") or {}).items() if not str(k).startswith(SPO_LABEL_PREFIX)}
    dropped = sorted(set(source.get("labels") or {}) - set(labels))
    if dropped:
        notes.append(f"metadata.labels: SPO's bookkeeping labels dropped ({', '.join(dropped)})")
    if labels:
        metadata["labels"] = labels
    if source.get("annotations"):
        metadata["annotations"] = dict(source["annotations"])
    for key in sorted(set(source) - {"name", "namespace", "labels", "annotations"}):
        if key in ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "finalizers",
                   "ownerReferences", "selfLink"):
            notes.append(f"metadata.{key}: dropped (set by the API server or SPO)")
        else:
            notes.append(f"metadata.{key}: not mapped; dropped")
    return metadata


def _seccomp(obj: Object, spec: Object, namespace: str | None, notes: list[str]) -> importer.Imported:
    if spec.get("disabled"):
        raise importer.UnsupportedInputError("spec.disabled: true: secprofiles has no disabled profiles (delete "
                                             "it, or import it without 'disabled')")
    metadata = _metadata(obj, namespace, namespaced=True, notes=notes)
    ours: Object = {}
    for key in ("defaultAction", "defaultErrnoRet", "architectures", "flags"):
        if key in spec:
            ours[key] = copy.deepcopy(spec[key])
    rules = []
    for index, rule in enumerate(spec.get("syscalls") or []):
        where = field_path(["spec", "syscalls", index])
        if not isinstance(rule, dict) or "action" not in rule:
            notes.append(f"{where}: a rule without an action cannot be mapped; dropped "
                         f"({', '.join((rule or {}).get('names') or []) if isinstance(rule, dict) else rule})")
            continue
        kept = {k: copy.deepcopy(v) for k, v in rule.items() if k in ("names", "action", "errnoRet", "args")}
        names = [str(n) for n in kept.get("names") or []]
        known = [n for n in names if syscalls.is_known(n, ours.get("architectures", []))]
        if known != names:
            on = ", ".join(ours.get("architectures", [])) or "any architecture libseccomp knows"
            notes.append(f"{where}.names: dropped names that are not a syscall on {on}: "
                         f"{', '.join(n for n in names if n not in known)}")
            kept["names"] = known
        if kept.get("names") or "names" not in rule:
            rules.append(kept)
        for key in sorted(set(rule) - {"names", "action", "errnoRet", "args"}):
            notes.append(f"{where}.{key}: not mapped; dropped")
    if rules:
        ours["syscalls"] = rules
    base = spec.get("baseProfileName")
    if base:
        if str(base).startswith("oci://"):
            notes.append(f"spec.baseProfileName: {base!r} is an OCI artifact; secprofiles bases are SeccompProfiles "
                         "of the namespace or bundled/<name>: not mapped, the profile is imported without it")
        else:
            ours["baseProfileName"] = importer.dns_name(str(base))
            notes.append(f"spec.baseProfileName: {base!r} must be a SeccompProfile of namespace "
                         f"{metadata['namespace']!r} (SPO keeps its runc/crun bases in its own namespace: import "
                         "that base profile into this namespace too)")
    for key, why in (("targetWorkload", "informational in SPO"),
                     ("listenerPath", "a seccomp agent (SCMP_ACT_NOTIFY) is not configured by secprofiles"),
                     ("listenerMetadata", "a seccomp agent (SCMP_ACT_NOTIFY) is not configured by secprofiles")):
        if key in spec:
            notes.append(f"spec.{key}: {spec[key]!r} not mapped ({why}); dropped")
    for key in sorted(set(spec) - {"defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls",
                                   "baseProfileName", "targetWorkload", "listenerPath", "listenerMetadata",
                                   "disabled"}):
        notes.append(f"spec.{key}: not mapped; dropped")
    notes.append(f"pods: localhostProfile operator/{metadata['namespace']}/{(obj.get('metadata') or {}).get('name')}"
                 f".json (SPO's file) becomes secprofiles/{metadata['namespace']}/{metadata['name']}.json")
    result = {"apiVersion": schema.API_VERSION, "kind": schema.SECCOMP_PROFILE, "metadata": metadata, "spec": ours}
    return importer.Imported(result, notes)


def _apparmor(obj: Object, spec: Object, notes: list[str]) -> importer.Imported:
    if spec.get("state") == "Disabled" or spec.get("disabled"):
        raise importer.UnsupportedInputError("spec.state: Disabled: secprofiles has no disabled profiles")
    metadata = _metadata(obj, None, namespaced=False, notes=notes)
    if apparmor.is_reserved(metadata["name"]):
        renamed = f"imported-{metadata['name']}"
        notes.append(f"metadata.name: {metadata['name']!r} is reserved for a host or runtime profile: named "
                     f"{renamed!r}")
        metadata["name"] = renamed
    mode = {"Complain": "complain", "Enforce": "enforce"}.get(str(spec.get("mode", "Enforce")))
    if mode is None:
        notes.append(f"spec.mode: {spec.get('mode')!r} is neither Enforce nor Complain; enforce")
        mode = "enforce"
    if spec.get("complainMode"):
        mode = "complain"
    ours: Object = {"mode": mode}
    if "policy" in spec:
        imported = importer.import_apparmor(str(spec["policy"]), metadata["name"])
        ours["policy"] = imported.obj["spec"]["policy"]
        if imported.obj["spec"]["mode"] == "complain":
            ours["mode"] = "complain"
        notes += [f"spec.policy: {note}" for note in imported.notes]
    elif "abstract" in spec:
        ours["rules"] = _abstract(spec.get("abstract") or {}, notes)
    else:
        raise importer.UnsupportedInputError("spec: neither policy nor abstract")
    for key in sorted(set(spec) - {"policy", "abstract", "mode", "state", "complainMode", "disabled"}):
        notes.append(f"spec.{key}: not mapped; dropped")
    result = {"apiVersion": schema.API_VERSION, "kind": schema.APPARMOR_PROFILE, "metadata": metadata, "spec": ours}
    return importer.Imported(result, notes)


def _paths(values: Any, where: str, notes: list[str]) -> list[str]:
    kept: list[str] = []
    for index, value in enumerate(values or []):
        text = str(value)
        if not text.startswith(("/", "@{")) or any(c in text for c in '"\\') or \
                any(ord(c) < 32 or ord(c) == 127 for c in text):
            notes.append(f"{where}[{index}]: {text!r} is not a path (an AppArmor rule smuggled into a path list?); "
                         "dropped")
        elif text in kept:
            notes.append(f"{where}[{index}]: {text!r} repeats an earlier entry; dropped")
        else:
            kept.append(text)
    return kept


def _abstract(abstract: Object, notes: list[str]) -> Object:
    """SPO's structured form to our ``rules`` (an allowlist on top of ``<abstractions/base>``)."""
    rules: Object = {}
    filesystem = abstract.get("filesystem") or {}
    where = "spec.abstract.filesystem"
    read_only = _paths(filesystem.get("readOnlyPaths"), f"{where}.readOnlyPaths", notes)
    writable = _paths(filesystem.get("readWritePaths"), f"{where}.readWritePaths", notes)
    write_only = _paths(filesystem.get("writeOnlyPaths"), f"{where}.writeOnlyPaths", notes)
    if write_only:
        notes.append(f"{where}.writeOnlyPaths: widened to writablePaths (read, write, lock, link): secprofiles "
                     f"has no write-only list ({len(write_only)} paths)")
    writable += [p for p in write_only if p not in writable]
    files: Object = {}
    if read_only:
        files["readOnlyPaths"] = read_only
    if writable:
        files["writablePaths"] = writable
    rules["filesystem"] = files
    executable = abstract.get("executable") or {}
    executables = _paths(executable.get("allowedExecutables"), "spec.abstract.executable.allowedExecutables", notes)
    libraries = _paths(executable.get("allowedLibraries"), "spec.abstract.executable.allowedLibraries", notes)
    if libraries:
        notes.append("spec.abstract.executable.allowedLibraries: mapped to executables (mrix): libraries need "
                     f"mmap, which readOnlyPaths (r) lacks ({len(libraries)} paths)")
    if executables or libraries:
        rules["executables"] = executables + [p for p in libraries if p not in executables]
    known = set(schema.enum_of(schema.APPARMOR_PROFILE, "spec", "rules", "capabilities", "[]"))
    capabilities = []
    for index, cap in enumerate((abstract.get("capability") or {}).get("allowedCapabilities") or []):
        name = str(cap).lower().removeprefix("cap_")
        if name in known:
            capabilities.append(name)
        else:
            notes.append(f"spec.abstract.capability.allowedCapabilities[{index}]: {cap!r} is not a capability; "
                         "dropped")
    if capabilities:
        rules["capabilities"] = sorted(set(capabilities))
    network = abstract.get("network") or {}
    protocols = network.get("allowedProtocols") or {}
    families: list[str] = []
    if protocols.get("allowTcp") or protocols.get("allowUdp"):
        families = ["inet", "inet6"]
        notes.append("spec.abstract.network.allowedProtocols: TCP/UDP widened to the inet and inet6 families "
                     "(secprofiles allows by address family, every socket type)")
    if network.get("allowRaw"):
        families = sorted(set(families) | {"inet", "inet6", "packet"})
        notes.append("spec.abstract.network.allowRaw: mapped to the inet, inet6 and packet families")
    if families:
        rules["network"] = {"families": families}
    for key in sorted(set(abstract) - {"filesystem", "executable", "capability", "network"}):
        notes.append(f"spec.abstract.{key}: not mapped; dropped")
    notes.append("spec.abstract: rendered on top of <abstractions/base> (as every structured profile here)")
    return rules


def _binding(obj: Object, spec: Object, namespace: str | None, notes: list[str]) -> importer.Imported:
    metadata = _metadata(obj, namespace, namespaced=True, notes=notes)
    ref = spec.get("profileRef") or {}
    if ref.get("kind") not in (schema.SECCOMP_PROFILE, schema.APPARMOR_PROFILE):
        raise importer.UnsupportedInputError(f"spec.profileRef.kind: {ref.get('kind')!r}: only SeccompProfile and "
                                             "AppArmorProfile bindings exist here")
    ours: Object = {"profileRef": {"kind": ref["kind"], "name": importer.dns_name(str(ref.get("name", "")))}}
    image = spec.get("image")
    if not image:
        raise importer.UnsupportedInputError("spec.image: missing; an SPO binding selects containers by image")
    ours["images"] = [str(image)]
    notes.append("the namespace must carry the label secprofiles.io/binding=enabled (SPO's was "
                 "spo.x-k8s.io/enable-binding) for pods to be bound")
    for key in sorted(set(spec) - {"profileRef", "image"}):
        notes.append(f"spec.{key}: not mapped; dropped")
    result = {"apiVersion": schema.API_VERSION, "kind": schema.PROFILE_BINDING, "metadata": metadata, "spec": ours}
    return importer.Imported(result, notes)
