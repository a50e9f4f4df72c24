"""The one kind -> API path table of secprofiles: Kubernetes' own kinds (``kube.resources.BUILTIN``) and the
kinds of this project's CRDs (read from ``crds/`` by ``model.schema``, at the version the model serves)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from secprofiles.kube.resources import BUILTIN, ApiResource
from secprofiles.model import schema


@cache
def table() -> Mapping[str, ApiResource]:
    """Every kind secprofiles knows, by kind."""
    custom = {kind: ApiResource.from_crd(crd, schema.VERSION) for kind, crd in schema.crds().items()}
    return {**BUILTIN, **custom}


def resource_path(kind: str, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    """The API path of ``kind``'s collection (all namespaces without ``namespace``), one object, or a subresource."""
    return table()[kind].path(namespace, name, subresource)


def object_path(obj: Mapping[str, Any], subresource: str | None = None) -> str:
    """The API path of the object itself (a namespaced object without a namespace is in ``default``)."""
    meta = obj["metadata"]
    return resource_path(obj["kind"], meta.get("namespace") or "default", meta["name"], subresource)


def collection_path(obj: Mapping[str, Any]) -> str:
    """The collection the object is created in."""
    meta = obj["metadata"]
    return resource_path(obj["kind"], meta.get("namespace") or "default")
