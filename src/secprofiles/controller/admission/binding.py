"""What the pod-binding webhook does to one new pod: pure logic, no I/O.

Given a pod, the ProfileBindings of its namespace, the known profiles with their status, and whether the API
server has the ``appArmorProfile`` field (1.30+), :func:`decide` returns a JSON patch, the value of the
``secprofiles.io/profiles`` annotation, admission warnings, or a rejection message.

Precedence for one container and one profile kind: bindings with ``overrideExisting`` (by name), then the pod's
own opt-in annotation, then the other bindings (by name). The first source that matches the container decides;
a profile the container (or the pod) already sets is kept unless that source has ``overrideExisting``.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from secprofiles.controller.podrefs import APPARMOR_ANNOTATION_PREFIX
from secprofiles.model import keys, schema
from secprofiles.objects import Object

JsonPatch = list[Object]

SECCOMP = schema.SECCOMP_PROFILE
APPARMOR = schema.APPARMOR_PROFILE
WARN, REJECT = "Warn", "Reject"
INSTALLED = "Installed"
SECCOMP_OPT_IN = "secprofiles.io/seccomp-profile"
APPARMOR_OPT_IN = "secprofiles.io/apparmor-profile"
PROFILES_ANNOTATION = "secprofiles.io/profiles"
# Only these exist in a CREATE request: ephemeral containers are added later, through their own subresource.
_CONTAINER_LISTS = ("initContainers", "containers")


@dataclass(frozen=True)
class ProfileInfo:
    """What the webhook needs to know of a profile: its status as the operator published it."""

    phase: str | None
    content_hash: str | None
    deleting: bool = False
    current: bool = True  # the status reflects the newest generation (the operator may hold Installing back)

    @property
    def ready(self) -> bool:
        """Installed on every node, with a known content hash, in its newest generation, and not being deleted."""
        return self.phase == INSTALLED and bool(self.content_hash) and not self.deleting and self.current


@dataclass(frozen=True)
class Binding:
    """A ProfileBinding, slimmed down."""

    namespace: str
    name: str
    profile_kind: str
    profile_name: str
    selector: Object | None = None
    images: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    enforcement: str = WARN
    override_existing: bool = False

    @classmethod
    def from_object(cls, obj: Object) -> Binding:
        """From a ProfileBinding object (defaults as in the CRD, for objects that bypassed defaulting)."""
        meta, spec = obj["metadata"], obj.get("spec") or {}
        ref = spec.get("profileRef") or {}
        return cls(namespace=meta["namespace"], name=meta["name"], profile_kind=ref.get("kind", SECCOMP),
                   profile_name=ref.get("name", ""), selector=spec.get("selector"),
                   images=tuple(spec.get("images") or ()), containers=tuple(spec.get("containers") or ()),
                   enforcement=spec.get("enforcement") or WARN,
                   override_existing=bool(spec.get("overrideExisting", False)))

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def profile_key(self) -> str:
        """The key of the referenced profile (as in NodeProfileStatus and the operator's state)."""
        return keys.profile_key(self.profile_kind, self.namespace, self.profile_name)


def describe(kind: str, namespace: str, name: str) -> str:
    """``SeccompProfile team-a/x`` or ``AppArmorProfile x``: how messages name a profile."""
    return f"{kind} {namespace}/{name}" if kind == SECCOMP else f"{kind} {name}"


def problem(binding: Binding, profiles: Mapping[str, ProfileInfo]) -> str | None:
    """Why ``binding`` cannot bind pods right now (profile missing or not Installed), or None."""
    return profile_problem(binding.profile_kind, binding.namespace, binding.profile_name, profiles)


def profile_problem(kind: str, namespace: str, name: str, profiles: Mapping[str, ProfileInfo]) -> str | None:
    """Why the profile ``kind`` ``name`` referenced from ``namespace`` cannot be used now, or None."""
    info = profiles.get(keys.profile_key(kind, namespace, name))
    what = describe(kind, namespace, name)
    if info is None:
        return f"{what} not found"
    if info.deleting:
        return f"{what} is being deleted"
    if info.phase == INSTALLED and info.content_hash and not info.current:
        return f"{what} is being updated: its newest version is not Installed on every node yet"
    if not info.ready:
        return f"{what} is {info.phase or 'not yet evaluated'}, not Installed on every node"
    return None


def selector_matches(selector: Object | None, labels: Mapping[str, str]) -> bool:
    """A standard label selector; a missing or empty selector matches everything."""
    if not selector:
        return True
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


@dataclass(frozen=True)
class _Source:
    """One way a container can get a profile: a binding or the pod's opt-in annotation."""

    origin: str
    kind: str
    namespace: str
    profile_name: str
    key: str
    enforcement: str
    override: bool
    binding: Binding | None = None

    def matches(self, pod_labels: Mapping[str, str], container: Object) -> bool:
        binding = self.binding
        if binding is None:
            return True
        if binding.containers and container.get("name") not in binding.containers:
            return False
        if binding.images and not any(fnmatch.fnmatchcase(str(container.get("image", "")), pattern)
                                       for pattern in binding.images):
            return False
        return selector_matches(binding.selector, pod_labels)


@dataclass
class Decision:
    """The webhook's answer for one pod."""

    patch: JsonPatch = field(default_factory=list)
    annotation: str | None = None
    warnings: list[str] = field(default_factory=list)
    rejection: str | None = None
    bound: set[str] = field(default_factory=set)  # keys of the bindings that set a profile on a container


def decide(pod: Object, bindings: Sequence[Binding], profiles: Mapping[str, ProfileInfo],
           apparmor_field: bool) -> Decision:
    """Decide how to bind ``pod`` (a CREATE request's object) to profiles.

    ``bindings`` are those of the pod's namespace; ``profiles`` maps profile keys to their status;
    ``apparmor_field`` says whether the API server has ``securityContext.appArmorProfile`` (1.30+), otherwise
    the per-container annotation is used.
    """
    meta = pod.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    labels: Mapping[str, str] = meta.get("labels") or {}
    annotations: dict[str, str] = dict(meta.get("annotations") or {})
    spec = pod.get("spec") or {}
    decision = Decision()
    # The mutated copies: security contexts per container, and the annotations.
    contexts: dict[tuple[str, int], Object] = {}
    new_annotations = dict(annotations)
    applied: dict[str, list[str]] = {}

    for kind in (SECCOMP, APPARMOR):
        sources = _sources(kind, namespace, [b for b in bindings if b.namespace == namespace], annotations)
        checked: dict[str, ProfileInfo | None] = {}
        for list_name, index, container in _containers(spec):
            cname = str(container.get("name", ""))
            matching = [s for s in sources if s.matches(labels, container)]
            if not matching:
                continue
            chosen = matching[0]
            for other in matching[1:]:
                if other.profile_name != chosen.profile_name:
                    decision.warnings.append(f"container {cname}: {other.origin} ignored, "
                                             f"{chosen.origin} takes precedence")
            if chosen.origin not in checked:
                checked[chosen.origin] = _check(chosen, profiles, decision)
            info = checked[chosen.origin]
            if info is None:
                continue  # not ready: warned (or rejected) once per source
            context = contexts.setdefault((list_name, index), dict(container.get("securityContext") or {}))
            existing = _existing(kind, spec, context, annotations, cname)
            wanted = _wanted(kind, namespace, chosen.profile_name)
            if existing is not None and existing != wanted:
                if not chosen.override:
                    decision.warnings.append(f"container {cname}: keeps its {_label(kind)} profile "
                                             f"{_show(existing)}; {chosen.origin} not applied")
                    continue
                decision.warnings.append(f"container {cname}: {_label(kind)} profile {_show(existing)} replaced "
                                         f"by {chosen.origin} (overrideExisting)")
            _set(kind, chosen.profile_name, wanted, context, new_annotations, cname, apparmor_field)
            applied.setdefault(cname, []).append(_record(kind, namespace, chosen.profile_name, info))
            if chosen.binding is not None and existing != wanted:
                # Counted only when it changed something: a reinvocation (reinvocationPolicy IfNeeded) is no new pod.
                decision.bound.add(chosen.binding.key)

    if decision.rejection:
        return Decision(warnings=decision.warnings, rejection=decision.rejection)
    if applied:
        new_annotations[PROFILES_ANNOTATION] = json.dumps(applied, sort_keys=True, separators=(",", ":"))
        decision.annotation = new_annotations[PROFILES_ANNOTATION]
    else:
        # Nobody else may claim what the webhook applied: the annotation is trustworthy only if it wrote it.
        new_annotations.pop(PROFILES_ANNOTATION, None)
    decision.patch = _patch(spec, contexts, annotations, new_annotations, "annotations" in meta)
    return decision


def _sources(kind: str, namespace: str, bindings: Sequence[Binding], annotations: Mapping[str, str]) -> list[_Source]:
    """Every source for ``kind`` in precedence order."""
    own = sorted((b for b in bindings if b.profile_kind == kind), key=lambda b: b.name)

    def of(binding: Binding) -> _Source:
        return _Source(origin=f"ProfileBinding {binding.name}", kind=kind, namespace=namespace,
                       profile_name=binding.profile_name,
                       key=binding.profile_key, enforcement=binding.enforcement,
                       override=binding.override_existing, binding=binding)

    sources = [of(b) for b in own if b.override_existing]
    annotation = SECCOMP_OPT_IN if kind == SECCOMP else APPARMOR_OPT_IN
    if opt_in := annotations.get(annotation):
        # The pod's own request: Warn (never blocks), and never replaces a profile set explicitly.
        sources.append(_Source(origin=f"annotation {annotation}", kind=kind, namespace=namespace,
                               profile_name=opt_in, key=keys.profile_key(kind, namespace, opt_in),
                               enforcement=WARN, override=False))
    return sources + [of(b) for b in own if not b.override_existing]


def _check(source: _Source, profiles: Mapping[str, ProfileInfo], decision: Decision) -> ProfileInfo | None:
    """The source's profile if ready; otherwise None, with a warning or (enforcement Reject) a rejection."""
    info = profiles.get(source.key)
    if info is not None and info.ready:
        return info
    message = f"{source.origin}: {profile_problem(source.kind, source.namespace, source.profile_name, profiles)}"
    if source.enforcement == REJECT:
        decision.rejection = decision.rejection or f"{message} (enforcement: Reject)"
    else:
        decision.warnings.append(f"{message}; pod admitted without it")
    return None


def _containers(spec: Object) -> Iterator[tuple[str, int, Object]]:
    for list_name in _CONTAINER_LISTS:
        for index, container in enumerate(spec.get(list_name) or []):
            yield list_name, index, container


def _wanted(kind: str, namespace: str, name: str) -> Object:
    if kind == SECCOMP:
        return {"type": "Localhost", "localhostProfile": keys.localhost_profile(namespace, name)}
    return {"type": "Localhost", "localhostProfile": name}


def _existing(kind: str, spec: Object, context: Object, annotations: Mapping[str, str],
              container: str) -> Object | None:
    """The profile of ``kind`` the container already has (its own, or inherited from the pod), normalised."""
    pod_context = spec.get("securityContext") or {}
    if kind == SECCOMP:
        found = context.get("seccompProfile") or pod_context.get("seccompProfile")
        return dict(found) if found else None
    found = context.get("appArmorProfile")
    if found:
        return dict(found)
    value = annotations.get(APPARMOR_ANNOTATION_PREFIX + container)
    if value:
        if value.startswith("localhost/"):
            return {"type": "Localhost", "localhostProfile": value.removeprefix("localhost/")}
        return {"type": {"runtime/default": "RuntimeDefault", "unconfined": "Unconfined"}.get(value, value)}
    found = pod_context.get("appArmorProfile")
    return dict(found) if found else None


def _set(kind: str, name: str, wanted: Object, context: Object, annotations: dict[str, str], container: str,
         apparmor_field: bool) -> None:
    if kind == SECCOMP:
        context["seccompProfile"] = wanted
    elif apparmor_field:
        context["appArmorProfile"] = wanted
        # The API server rejects a pod whose annotation and field disagree: the field is now the truth.
        annotations.pop(APPARMOR_ANNOTATION_PREFIX + container, None)
    else:
        annotations[APPARMOR_ANNOTATION_PREFIX + container] = f"localhost/{name}"


def _record(kind: str, namespace: str, name: str, info: ProfileInfo) -> str:
    """``SeccompProfile/<ns>/<name>@<hash>`` or ``AppArmorProfile/<name>@<hash>``."""
    where = f"{namespace}/{name}" if kind == SECCOMP else name
    return f"{kind}/{where}@{info.content_hash}"


def _label(kind: str) -> str:
    return "seccomp" if kind == SECCOMP else "AppArmor"


def _show(profile: Object) -> str:
    return str(profile.get("localhostProfile") or profile.get("type"))


def _patch(spec: Object, contexts: Mapping[tuple[str, int], Object], before: Mapping[str, str],
           after: Mapping[str, str], has_annotations: bool) -> JsonPatch:
    """JSON patch ops: whole security contexts per changed container, single annotation keys."""
    ops: JsonPatch = []
    for (list_name, index), context in sorted(contexts.items()):
        if context != (spec[list_name][index].get("securityContext") or {}):
            ops.append({"op": "add", "path": f"/spec/{list_name}/{index}/securityContext", "value": context})
    if after == before:
        return ops
    if not has_annotations:
        return [*ops, {"op": "add", "path": "/metadata/annotations", "value": dict(after)}]
    for key in sorted(before.keys() - after.keys()):
        ops.append({"op": "remove", "path": f"/metadata/annotations/{_escape(key)}"})
    for key in sorted(after):
        if before.get(key) != after[key]:
            ops.append({"op": "add", "path": f"/metadata/annotations/{_escape(key)}", "value": after[key]})
    return ops


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def apply_patch(obj: Object, ops: JsonPatch) -> None:
    """Apply ops made by :func:`decide` (``add`` and ``remove`` on existing parents) to ``obj`` in place."""
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target: Any = obj
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if op["op"] == "remove":
            del target[last]
        else:
            target[last] = op["value"]
