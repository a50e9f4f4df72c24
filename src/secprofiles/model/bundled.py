"""The ready profiles shipped in ``profiles/``; SeccompProfiles there are bases as ``bundled/<name>``."""

from __future__ import annotations

from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable

import yaml

from secprofiles.model import schema
from secprofiles.model.seccomp import BUNDLED_PREFIX, ProfileLookup, Spec
from secprofiles.objects import Object


def _files(folder: Traversable) -> list[Traversable]:
    found: list[Traversable] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            found += _files(entry)
        elif entry.name.endswith((".yaml", ".yml")):
            found.append(entry)
    return found


@cache
def documents() -> tuple[Object, ...]:
    """Every object in the bundled library."""
    root = resources.files("secprofiles").joinpath("data/profiles")
    docs: list[Object] = []
    for entry in _files(root):
        docs += [d for d in yaml.safe_load_all(entry.read_text(encoding="utf-8")) if d]
    return tuple(docs)


def seccomp_base(reference: str) -> Spec | None:
    """The spec a ``bundled/<name>`` base reference names, or None."""
    if not reference.startswith(BUNDLED_PREFIX):
        return None
    name = reference.removeprefix(BUNDLED_PREFIX)
    for doc in documents():
        if doc.get("kind") == schema.SECCOMP_PROFILE and doc["metadata"]["name"] == name:
            spec: Spec = doc["spec"]
            return spec
    return None


def with_bundled(lookup: ProfileLookup) -> ProfileLookup:
    """``lookup`` extended with the ``bundled/<name>`` bases."""

    def find(namespace: str, name: str) -> Spec | None:
        return seccomp_base(name) if name.startswith(BUNDLED_PREFIX) else lookup(namespace, name)

    return find
