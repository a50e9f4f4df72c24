"""An in-memory stand-in for the few API calls the agent makes (no cluster)."""

from __future__ import annotations

import copy
from typing import Any

from secprofiles.kube.client import ApiError


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch, in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeApi:
    """Objects by API path; records every write."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, Any]] = []

    def add_node(self, name: str, taints: list[dict[str, str]] | None = None) -> None:
        self.objects[f"/api/v1/nodes/{name}"] = {"metadata": {"name": name, "uid": f"uid-{name}"},
                                                 "spec": {"taints": taints or []}}

    async def get(self, path: str) -> dict[str, Any] | None:
        found = self.objects.get(path)
        return copy.deepcopy(found)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("POST", path, body))
        item = f"{path}/{body['metadata']['name']}"
        if item in self.objects:
            raise ApiError(409, "Conflict", "exists")
        self.objects[item] = {k: copy.deepcopy(v) for k, v in body.items() if k != "status"}
        return copy.deepcopy(self.objects[item])

    async def patch(self, path: str, body: Any, patch_type: str = "merge",
                    params: dict[str, str] | None = None) -> dict[str, Any]:
        self.writes.append(("PATCH", path, copy.deepcopy(body)))
        target = self.objects.get(path.removesuffix("/status"))
        if target is None:
            raise ApiError(404, "Not Found", path)
        if patch_type == "merge":
            merge(target, body)
        else:
            for op in body:
                assert op["path"] == "/spec/taints"
                if op["op"] == "test" and target["spec"].get("taints") != op["value"]:
                    raise ApiError(422, "Unprocessable Entity", "the test operation failed")
                if op["op"] == "replace":
                    target["spec"]["taints"] = op["value"]
        return copy.deepcopy(target)

    def status_patches(self) -> list[Any]:
        return [body for method, path, body in self.writes if method == "PATCH" and path.endswith("/status")]
