"""The readiness gate: remove ``secprofiles.io/not-ready`` from this agent's own Node once it is synced."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from secprofiles.kube.client import ApiError
from secprofiles.model import nodereport
from secprofiles.resources import resource_path

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 10


class Api(Protocol):
    """The part of ``KubeApi`` used here."""

    async def get(self, path: str) -> dict[str, Any] | None: ...

    async def patch(self, path: str, body: Any, patch_type: str = "merge",
                    params: dict[str, str] | None = None) -> dict[str, Any]: ...


def untaint_patch(taints: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """A JSON patch removing the not-ready taint(s), guarded by a ``test`` of the whole array; None if absent.

    The ``test`` op makes the patch fail (422) if anyone changed the taints since we read them, instead of
    overwriting their change: the caller reads again and retries.
    """
    kept = [taint for taint in taints if taint.get("key") != nodereport.NOT_READY_TAINT]
    if len(kept) == len(taints):
        return None
    return [{"op": "test", "path": "/spec/taints", "value": taints},
            {"op": "replace", "path": "/spec/taints", "value": kept}]


async def remove_not_ready_taint(api: Api, node_name: str) -> bool:
    """Remove the taint from the Node; True if it was removed, False if it was not there.

    Retries immediately on a conflicting concurrent change (each attempt reads fresh taints).
    """
    path = resource_path("Node", name=node_name)
    for _ in range(MAX_ATTEMPTS):
        node = await api.get(path)
        if node is None:
            raise RuntimeError(f"Node {node_name!r} does not exist")
        patch = untaint_patch(node.get("spec", {}).get("taints") or [])
        if patch is None:
            return False
        try:
            await api.patch(path, patch, patch_type="json")
        except ApiError as error:
            if error.status in (409, 422):  # the test op failed: someone else changed the taints
                log.info("node taints changed concurrently; reading them again", extra={"error": str(error)})
                continue
            raise
        log.info("removed the readiness taint", extra={"taint": nodereport.NOT_READY_TAINT})
        return True
    raise RuntimeError(f"could not remove the taint from Node {node_name!r}: taints kept changing")
