"""What the operator knows of the cluster, fed by watch events; pure and synchronous.

Every ``apply_*`` method returns the profile keys whose status may have changed, so the reconciler works
only on those. Pods are reduced to the profile keys they reference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from secprofiles.controller import podrefs
from secprofiles.controller.admission.binding import Binding, ProfileInfo
from secprofiles.controller.nodes import NodeCounts, NodeView
from secprofiles.model import keys, nodereport, schema
from secprofiles.model.nodereport import Report
from secprofiles.model.seccomp import BUNDLED_PREFIX, Spec
from secprofiles.objects import Object

WINDOWS = "windows"


@dataclass
class Profile:
    """The parts of a profile object the operator needs."""

    key: str
    kind: str
    name: str
    namespace: str | None
    uid: str
    generation: int
    resource_version: str
    deleting: bool
    finalizers: tuple[str, ...]
    spec: Spec
    status: Object

    @classmethod
    def from_object(cls, obj: Object) -> Profile:
        """Slim a watched object down."""
        meta = obj["metadata"]
        return cls(key=keys.key_of(obj), kind=obj["kind"], name=meta["name"], namespace=meta.get("namespace"),
                   uid=meta.get("uid", ""), generation=int(meta.get("generation", 1)),
                   resource_version=meta.get("resourceVersion", ""), deleting="deletionTimestamp" in meta,
                   finalizers=tuple(meta.get("finalizers", [])), spec=obj.get("spec") or {},
                   status=obj.get("status") or {})

    def as_object(self) -> Object:
        """An object the shared model can validate and render."""
        meta: Object = {"name": self.name}
        if self.namespace:
            meta["namespace"] = self.namespace
        return {"apiVersion": schema.API_VERSION, "kind": self.kind, "metadata": meta, "spec": self.spec}


@dataclass
class BindingRecord:
    """A ProfileBinding as last seen (its status writer reads the status fresh: replicas add to its count)."""

    binding: Binding


class ProfileInfos(Mapping[str, ProfileInfo]):
    """A read-only view of the profiles' published status, for the webhook (no copy per request)."""

    def __init__(self, profiles: dict[str, Profile]) -> None:
        self._profiles = profiles

    def __getitem__(self, key: str) -> ProfileInfo:
        profile = self._profiles[key]
        return ProfileInfo(phase=profile.status.get("phase"), content_hash=profile.status.get("contentHash"),
                           deleting=profile.deleting,
                           current=profile.status.get("observedGeneration") == profile.generation)

    def __iter__(self) -> Iterator[str]:
        return iter(self._profiles)

    def __len__(self) -> int:
        return len(self._profiles)


@dataclass
class ClusterState:
    """Profiles, nodes, node reports and pod references, as last seen."""

    profiles: dict[str, Profile] = field(default_factory=dict)
    view: NodeView = field(default_factory=NodeView)  # desired nodes, their reports, the renderings, confirmations
    pod_refs: dict[str, frozenset[str]] = field(default_factory=dict)
    users: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    bindings: defaultdict[str, dict[str, BindingRecord]] = field(default_factory=lambda: defaultdict(dict))
    # base key -> keys of the SeccompProfiles naming it as base: finding dependents must not scan every profile
    # on every event (quadratic at thousands of profiles).
    children: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def apply_binding(self, event: str, obj: Object) -> str:
        """A ProfileBinding event; returns its key (``namespace/name``)."""
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if event == "DELETED":
            self.bindings[namespace].pop(name, None)
            if not self.bindings[namespace]:
                del self.bindings[namespace]
        else:
            self.bindings[namespace][name] = BindingRecord(Binding.from_object(obj))
        return f"{namespace}/{name}"

    def bindings_in(self, namespace: str) -> list[Binding]:
        """The ProfileBindings of one namespace."""
        return [record.binding for record in self.bindings.get(namespace, {}).values()]

    def binding_record(self, key: str) -> BindingRecord | None:
        """One ProfileBinding by ``namespace/name``."""
        namespace, _, name = key.partition("/")
        return self.bindings.get(namespace, {}).get(name)

    def bindings_of_profile(self, profile_key: str) -> set[str]:
        """Keys of the ProfileBindings that reference a profile."""
        return {record.binding.key for records in self.bindings.values() for record in records.values()
                if record.binding.profile_key == profile_key}

    def profile_infos(self) -> ProfileInfos:
        """The profiles' published status, as the webhook needs it."""
        return ProfileInfos(self.profiles)

    def apply_profile(self, event: str, obj: Object) -> set[str]:
        """A SeccompProfile or AppArmorProfile event; dirties it and every profile built on it."""
        profile = Profile.from_object(obj)
        if (old := self.profiles.pop(profile.key, None)) is not None:
            self._unlink_base(old)
        if event != "DELETED":
            self.profiles[profile.key] = profile
            if (base := self._base_key(profile)) is not None:
                self.children[base].add(profile.key)
        return {profile.key} | self.dependents(profile.key)

    def _unlink_base(self, profile: Profile) -> None:
        base = self._base_key(profile)
        if base is not None and base in self.children:
            self.children[base].discard(profile.key)
            if not self.children[base]:
                del self.children[base]

    def dependents(self, key: str) -> set[str]:
        """Keys of the profiles whose base chain includes ``key`` (directly or not)."""
        found: set[str] = set()
        frontier = {key}
        while frontier:
            frontier = {child for parent in frontier for child in self.children.get(parent, ())} - found
            found |= frontier
        return found

    @staticmethod
    def _base_key(profile: Profile) -> str | None:
        base = profile.spec.get("baseProfileName")
        if (profile.kind != schema.SECCOMP_PROFILE or not base or base.startswith(BUNDLED_PREFIX)
                or profile.namespace is None):
            return None
        return keys.seccomp_key(profile.namespace, base)

    def lookup(self, namespace: str, name: str) -> Spec | None:
        """A SeccompProfile's spec, for base resolution."""
        profile = self.profiles.get(keys.seccomp_key(namespace, name))
        return profile.spec if profile else None

    def apply_node(self, event: str, obj: Object) -> set[str]:
        """A Node event. Desired are the Linux nodes without the readiness taint: a node its agent has not synced
        yet runs no pod that needs a profile (the taint keeps them off), and counting it would flip every profile
        to Installing and back whenever a node joins."""
        meta, spec = obj["metadata"], obj.get("spec") or {}
        linux = (meta.get("labels") or {}).get("kubernetes.io/os") != WINDOWS
        tainted = any(t.get("key") == nodereport.NOT_READY_TAINT for t in spec.get("taints") or [])
        return self.view.apply_node(meta["name"], event != "DELETED" and linux and not tainted)

    def apply_report(self, event: str, obj: Object) -> set[str]:
        """A NodeProfileStatus event: dirties the profiles whose view on that node changed."""
        report = None if event == "DELETED" else Report.from_object(obj)
        return self.view.apply_report(obj["metadata"]["name"], report)

    def set_rendering(self, key: str, content_hash: str | None) -> set[str]:
        """What the operator validated for ``key`` (None: invalid or gone); returns the keys to reconcile."""
        return self.view.set_rendering(key, content_hash)

    def apply_pod(self, event: str, obj: Object) -> set[str]:
        """A Pod event: only its profile references are kept."""
        meta = obj["metadata"]
        pod = f"{meta.get('namespace', '')}/{meta['name']}"
        old = self.pod_refs.get(pod, frozenset())
        new = frozenset() if event == "DELETED" else podrefs.references(obj)
        if new:
            self.pod_refs[pod] = new
        else:
            self.pod_refs.pop(pod, None)
        for key in old - new:
            self.users[key].discard(pod)
            if not self.users[key]:
                del self.users[key]
        for key in new - old:
            self.users[key].add(pod)
        return set(old ^ new)

    def node_counts(self, key: str) -> NodeCounts:
        """The desired nodes, and for a profile with a rendering those that have it and those where it failed."""
        if key in self.view.renderings:
            return self.view.counts(key)
        return NodeCounts(len(self.view.nodes), 0, {})
