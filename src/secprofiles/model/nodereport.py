"""The NodeProfileStatus contract between a node's agent (writer) and the operator (reader).

One object per node, named after the Node and owned by it. ``status.profiles`` maps a profile key
(``model.keys``) to what the node has: ``{"contentHash": "sha256:…", "state": "Installed" | "Error",
"message": "…"}``. The agent updates it with JSON merge patches that carry only changed keys (``None`` removes a
key), so a burst of changes costs one write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from secprofiles.model import schema

INSTALLED = "Installed"
ERROR = "Error"
NOT_READY_TAINT = "secprofiles.io/not-ready"
APPARMOR_NOT_ENABLED = "AppArmor not enabled on node"


@dataclass(frozen=True)
class Entry:
    """What one node reports for one profile."""

    content_hash: str
    state: str
    message: str = ""

    def as_status(self) -> dict[str, str]:
        """The JSON form stored under ``status.profiles[key]``."""
        value = {"contentHash": self.content_hash, "state": self.state}
        if self.message:
            value["message"] = self.message
        return value

    @classmethod
    def from_status(cls, value: dict[str, Any]) -> Entry:
        """Parse one ``status.profiles`` value."""
        return cls(str(value.get("contentHash", "")), str(value.get("state", "")), str(value.get("message", "")))


def new_object(node: dict[str, Any]) -> dict[str, Any]:
    """A NodeProfileStatus for ``node`` (a Node object), owned by it so it goes away with it."""
    name = node["metadata"]["name"]
    return {"apiVersion": schema.API_VERSION, "kind": schema.NODE_PROFILE_STATUS,
            "metadata": {"name": name, "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}]},
            "spec": {"nodeName": name}}
