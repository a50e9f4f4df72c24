"""The node's NodeProfileStatus, written in batches: many entry changes, one merge patch.

Entry changes are coalesced in memory (the last value per key wins, a change back to what was last
sent cancels out) and ``flush`` sends them in one JSON merge patch to the status subresource, with the
summary counts and node facts. The agent flushes whenever its work queue is drained, so a burst of
profile changes costs one write.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from secprofiles.kube.client import ApiError
from secprofiles.model import nodereport, schema
from secprofiles.model.nodereport import Entry
from secprofiles.resources import resource_path

log = logging.getLogger(__name__)
_MISSING = object()


class Api(Protocol):
    """The part of ``KubeApi`` the reporter uses (a fake in unit tests)."""

    async def get(self, path: str) -> dict[str, Any] | None: ...

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def patch(self, path: str, body: Any, patch_type: str = "merge",
                    params: dict[str, str] | None = None) -> dict[str, Any]: ...


class Reporter:
    """Batched writer of one node's NodeProfileStatus."""

    def __init__(self, api: Api, node_name: str) -> None:
        self.api = api
        self.node_name = node_name
        self.path = resource_path(schema.NODE_PROFILE_STATUS, name=node_name)
        self._sent: dict[str, Entry] = {}
        self._pending: dict[str, Entry | None] = {}
        self._facts: dict[str, Any] = {}
        self._sent_facts: dict[str, Any] = {}
        self.patches = 0

    async def ensure_object(self) -> None:
        """Create the NodeProfileStatus (owned by the Node) if absent; remember the entries it already has."""
        existing = await self.api.get(self.path)
        if existing is None:
            node = await self.api.get(resource_path("Node", name=self.node_name))
            if node is None:
                raise RuntimeError(f"Node {self.node_name!r} does not exist")
            try:
                existing = await self.api.create(resource_path(schema.NODE_PROFILE_STATUS),
                                                 nodereport.new_object(node))
            except ApiError as error:
                if error.status != 409:
                    raise
                existing = await self.api.get(self.path) or {}  # another start of this agent won the race
        profiles = (existing.get("status") or {}).get("profiles") or {}
        self._sent = {key: Entry.from_status(value) for key, value in profiles.items()}

    def reported_keys(self) -> set[str]:
        """Keys the status has or will have after the next flush."""
        keys = set(self._sent) | {k for k, v in self._pending.items() if v is not None}
        return keys - {k for k, v in self._pending.items() if v is None}

    def set(self, key: str, entry: Entry) -> None:
        """Report ``entry`` for ``key`` at the next flush."""
        self._stage(key, entry)

    def remove(self, key: str) -> None:
        """Drop ``key`` from the status at the next flush."""
        self._stage(key, None)

    def _stage(self, key: str, value: Entry | None) -> None:
        if self._sent.get(key) == value:
            self._pending.pop(key, None)  # back to what the server has: nothing to send
        else:
            self._pending[key] = value

    def set_facts(self, **facts: Any) -> None:
        """Node facts (``ready``, ``appArmorEnabled``, ...) for the next flush; unchanged ones are not resent."""
        for name, value in facts.items():
            if self._sent_facts.get(name, _MISSING) == value:
                self._facts.pop(name, None)
            else:
                self._facts[name] = value

    async def recreate(self) -> None:
        """The object vanished (deleted by hand): create it again and resend everything at the next flush."""
        everything: dict[str, Entry | None] = {**self._sent, **self._pending}
        facts = {**self._sent_facts, **self._facts}
        self._sent, self._sent_facts = {}, {}
        await self.ensure_object()
        self._sent = {}
        self._pending = {k: v for k, v in everything.items() if v is not None}
        self._facts = facts

    def pending(self) -> int:
        """How many entry changes wait for the next flush."""
        return len(self._pending)

    def entries(self) -> dict[str, Entry]:
        """Every entry as it will be after the next flush."""
        merged = {**self._sent, **self._pending}
        return {key: entry for key, entry in merged.items() if entry is not None}

    def summary(self) -> dict[str, int]:
        """Counts over the entries as they will be after the next flush."""
        states = [entry.state for entry in self.entries().values()]
        return {"installed": states.count(nodereport.INSTALLED), "failed": states.count(nodereport.ERROR)}

    async def flush(self) -> bool:
        """Send every pending change in one merge patch to the status subresource; False if nothing to send.

        On failure the changes stay pending (merged with newer ones) and the error propagates.
        """
        if not self._pending and not self._facts:
            return False
        pending, facts = self._pending, self._facts
        status: dict[str, Any] = {**facts, "summary": self.summary()}
        if pending:
            status["profiles"] = {k: None if v is None else v.as_status() for k, v in pending.items()}
        self._pending, self._facts = {}, {}
        try:
            await self.api.patch(self.path + "/status", {"status": status})
        except BaseException:
            self._pending = {**pending, **self._pending}
            self._facts = {**facts, **self._facts}
            raise
        for key, value in pending.items():
            if value is None:
                self._sent.pop(key, None)
            else:
                self._sent[key] = value
        self._sent_facts.update(facts)
        self.patches += 1
        log.debug("status patched", extra={"entries": len(pending), "facts": sorted(facts)})
        return True
