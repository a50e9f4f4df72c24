"""The desired state of a node: every SeccompProfile and AppArmorProfile the cluster has. Pure logic.

Fed by the watch streams; answers base-profile lookups for rendering, and tells which status keys an
event made dirty: the profile itself plus every SeccompProfile that uses it, directly or through other
bases, as its base (a changed base changes their rendered bytes).
"""

from __future__ import annotations

from collections.abc import Iterator

from secprofiles.model import keys, schema
from secprofiles.model.seccomp import Spec
from secprofiles.objects import Object


def slim(obj: Object) -> Object:
    """Only what rendering needs (kind, name, namespace, spec) and the content hash the operator validated (see
    ``validated_hash``): managedFields and annotations can be large, and other status changes are no news here."""
    meta = obj["metadata"]
    kept = {k: meta[k] for k in ("name", "namespace") if k in meta}
    slimmed = {"apiVersion": obj.get("apiVersion", schema.API_VERSION), "kind": obj["kind"], "metadata": kept,
               "spec": obj.get("spec", {})}
    if validated := validated_hash(obj):
        slimmed["status"] = {"contentHash": validated}
    return slimmed


def _without_status(obj: Object) -> Object:
    return {k: v for k, v in obj.items() if k != "status"}


def validated_hash(obj: Object) -> str | None:
    """The content hash the operator published for this profile: the rendering it validated, native checks
    (libseccomp, apparmor_parser) included."""
    status = obj.get("status")
    return str(status["contentHash"]) if isinstance(status, dict) and status.get("contentHash") else None


class DesiredState:
    """Profiles by status key (``seccomp/<ns>/<name>``, ``apparmor/<name>``), with a reverse base index."""

    def __init__(self) -> None:
        self._objects: dict[str, Object] = {}
        # (namespace, base name) -> names of SeccompProfiles in that namespace naming it as their base.
        self._dependents: dict[tuple[str, str], set[str]] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def __iter__(self) -> Iterator[str]:
        return iter(self._objects)

    def keys(self) -> set[str]:
        """Every profile key."""
        return set(self._objects)

    def get(self, key: str) -> Object | None:
        """The (slim) object of a key, or None when the profile does not exist."""
        return self._objects.get(key)

    def lookup(self, namespace: str, name: str) -> Spec | None:
        """A ``seccomp.ProfileLookup`` over the SeccompProfiles seen."""
        obj = self._objects.get(keys.seccomp_key(namespace, name))
        return None if obj is None else obj["spec"]

    def apply(self, event: str, obj: Object) -> set[str]:
        """Record a watch event (ADDED, MODIFIED, DELETED); returns the keys whose rendering may have changed."""
        if obj.get("kind") not in (schema.SECCOMP_PROFILE, schema.APPARMOR_PROFILE):
            return set()
        key = keys.key_of(obj)
        before = self._objects.get(key)
        after = None if event == "DELETED" else slim(obj)
        if before == after:
            return set()  # a relist or a metadata-only change: nothing to do
        if before is not None and after is not None and _without_status(before) == _without_status(after):
            self._objects[key] = after  # the operator validated the rendering: kept for the next render, no work
            return set()
        if before is not None:
            self._index(before, add=False)
        if after is None:
            del self._objects[key]
        else:
            self._objects[key] = after
            self._index(after, add=True)
        return {key, *self._dependents_of(obj)}

    def _index(self, obj: Object, add: bool) -> None:
        base = obj["spec"].get("baseProfileName") if obj["kind"] == schema.SECCOMP_PROFILE else None
        if not base:
            return
        entry = (obj["metadata"]["namespace"], base)
        names = self._dependents.setdefault(entry, set())
        if add:
            names.add(obj["metadata"]["name"])
        else:
            names.discard(obj["metadata"]["name"])
            if not names:
                del self._dependents[entry]

    def _dependents_of(self, obj: Object) -> set[str]:
        if obj["kind"] != schema.SECCOMP_PROFILE:
            return set()
        namespace = obj["metadata"]["namespace"]
        found: set[str] = set()
        todo = [obj["metadata"]["name"]]
        while todo:  # breadth-first over the reverse index; `found` stops cycles
            for name in self._dependents.get((namespace, todo.pop()), ()):
                if name not in found:
                    found.add(name)
                    todo.append(name)
        return {keys.seccomp_key(namespace, name) for name in found}

