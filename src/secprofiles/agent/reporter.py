"""The node's NodeProfileStatus (``model.nodereport``), written in batches: many changes, one small merge patch.

The reporter keeps what the node has processed - ``(key, contentHash)`` of every valid rendering it installed or
failed to install - as per-bucket digests, and the failures. ``flush`` sends only the buckets, failures and facts
that differ from what the server has, in one JSON merge patch to the status subresource, with the summary counts.
The agent flushes whenever its work queue is drained, so a burst of profile changes costs one write, whose size
depends on the buckets touched (at most ``nodereport.BUCKETS``), never on the number of profiles.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from secprofiles.kube.client import ApiError
from secprofiles.model import keys, nodereport, schema
from secprofiles.model.nodereport import Digests, Failure
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
        self._processed: dict[str, str] = {}  # key -> content hash of the valid rendering processed
        self._digests = Digests()
        self._failures: dict[str, Failure] = {}
        self._sent_buckets: dict[str, dict[str, Any]] = {}
        self._sent_failures: dict[str, Failure] = {}
        self._sent_truncated = False
        self._facts: dict[str, Any] = {}
        self._sent_facts: dict[str, Any] = {}
        self.patches = 0

    async def ensure_object(self) -> None:
        """Create the NodeProfileStatus (owned by the Node) if absent; remember what the server has."""
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
        status = existing.get("status") or {}
        self._sent_buckets = {b: v for b, v in (status.get("buckets") or {}).items() if isinstance(v, dict)}
        self._sent_failures = {k: Failure(str(v.get("contentHash", "")), str(v.get("message", "")))
                               for k, v in (status.get("failures") or {}).items() if isinstance(v, dict)}
        self._sent_truncated = status.get("failuresTruncated") is True

    def known_keys(self) -> set[str]:
        """Keys the status speaks of (processed or failed, here or, for failures, as the server has them)."""
        return set(self._processed) | set(self._failures) | set(self._sent_failures)

    def processed(self, key: str, content_hash: str, failure: Failure | None = None) -> None:
        """``key`` is processed at ``content_hash``: installed, or failed as ``failure`` says."""
        self._digests.replace(key, self._processed.get(key), content_hash)
        self._processed[key] = content_hash
        self._set_failure(key, failure)

    def invalid(self, key: str, message: str) -> None:
        """The node judges ``key`` invalid: not processed (out of the digest), a failure with hash ``""``."""
        self._digests.replace(key, self._processed.pop(key, None), None)
        self._set_failure(key, Failure("", message))

    def forget(self, key: str) -> None:
        """The profile is gone: out of the digest and the failures."""
        self._digests.replace(key, self._processed.pop(key, None), None)
        self._set_failure(key, None)

    def _set_failure(self, key: str, failure: Failure | None) -> None:
        if failure is None:
            self._failures.pop(key, None)
        else:
            self._failures[key] = Failure(failure.content_hash, _short(failure.message))

    def set_facts(self, **facts: Any) -> None:
        """Node facts (``ready``, ``appArmorEnabled``, ...) for the next flush; unchanged ones are not resent."""
        for name, value in facts.items():
            if self._sent_facts.get(name, _MISSING) == value:
                self._facts.pop(name, None)
            else:
                self._facts[name] = value

    async def recreate(self) -> None:
        """The object vanished (deleted by hand): create it again and resend everything at the next flush."""
        facts = {**self._sent_facts, **self._facts}
        self._sent_facts = {}
        await self.ensure_object()
        self._facts = facts

    def summary(self) -> dict[str, int]:
        """Counts for people: installed (processed without a failure) and failed (failures, listed or implied)."""
        return {"installed": len(self._processed.keys() - self._failures.keys()), "failed": len(self._failures)}

    def counts_by_kind(self) -> dict[str, dict[str, int]]:
        """Profiles per kind (``seccomp``, ``apparmor``) and state (Installed, Error), for the agent's gauges."""
        counts = {kind: {nodereport.INSTALLED: 0, nodereport.ERROR: 0} for kind in (keys.SECCOMP, keys.APPARMOR)}
        for key in self._processed.keys() | self._failures.keys():
            state = nodereport.ERROR if key in self._failures else nodereport.INSTALLED
            counts[key.partition("/")[0]][state] += 1
        return counts

    def _listed_failures(self) -> tuple[dict[str, Failure], bool]:
        """The failures to list (those ``appArmorEnabled: false`` implies are not) and whether some are cut."""
        listed = {k: f for k, f in sorted(self._failures.items()) if f.message != nodereport.APPARMOR_NOT_ENABLED}
        if len(listed) <= nodereport.MAX_FAILURES:
            return listed, False
        return dict(list(listed.items())[:nodereport.MAX_FAILURES]), True

    def _changes(self) -> dict[str, Any]:
        """What differs from the server: the ``status`` of a merge patch, without summary (empty: nothing)."""
        status: dict[str, Any] = dict(self._facts)
        current = self._digests.as_status(self._digests.values)
        buckets = {b: v for b, v in current.items() if self._sent_buckets.get(b) != v}
        buckets.update({b: None for b in self._sent_buckets if b not in current})
        if buckets:
            status["buckets"] = buckets
        listed, truncated = self._listed_failures()
        failures: dict[str, Any] = {k: f.as_status() for k, f in listed.items() if self._sent_failures.get(k) != f}
        failures.update({k: None for k in self._sent_failures if k not in listed})
        if failures:
            status["failures"] = failures
        if truncated != self._sent_truncated:
            status["failuresTruncated"] = truncated
        return status

    def pending(self) -> bool:
        """Whether the next flush has anything to send."""
        return bool(self._changes())

    async def flush(self) -> bool:
        """Send what changed in one merge patch to the status subresource; False if nothing to send.

        On failure nothing counts as sent (the next flush computes the difference again) and the error propagates.
        """
        status = self._changes()
        if not status:
            return False
        status["summary"] = self.summary()
        facts = dict(self._facts)
        await self.api.patch(self.path + "/status", {"status": status})
        for bucket, value in (status.get("buckets") or {}).items():
            if value is None:
                self._sent_buckets.pop(bucket, None)
            else:
                self._sent_buckets[bucket] = value
        for key, value in (status.get("failures") or {}).items():
            if value is None:
                self._sent_failures.pop(key, None)
            else:
                self._sent_failures[key] = Failure(value["contentHash"], value["message"])
        self._sent_truncated = status.get("failuresTruncated", self._sent_truncated)
        self._sent_facts.update(facts)
        for name, value in facts.items():
            if self._facts.get(name, _MISSING) == value:
                del self._facts[name]
        self.patches += 1
        log.debug("status patched", extra={"buckets": len(status.get("buckets") or {}),
                                           "failures": len(status.get("failures") or {})})
        return True


def _short(message: str) -> str:
    limit = nodereport.MAX_MESSAGE
    return message if len(message) <= limit else message[:limit - 3] + "..."
