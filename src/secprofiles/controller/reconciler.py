"""Turns dirty profile keys into status patches, finalizer changes and Events.

One worker drains a queue of keys that watch events marked dirty; nothing is requeued on a timer. A key
is reconciled from the in-memory ``ClusterState``; only writes go to the API server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from secprofiles.controller import aggregate, podrefs
from secprofiles.controller.metrics import OperatorMetrics
from secprofiles.controller.state import ClusterState, Profile
from secprofiles.kube import clock
from secprofiles.kube.client import ApiError, KubeApi
from secprofiles.model import schema, seccomp
from secprofiles.model.evaluate import Outcome, evaluate
from secprofiles.resources import resource_path

log = logging.getLogger(__name__)

FINALIZER = "secprofiles.io/in-use-protection"
COMPONENT = "secprofiles-operator"
NAMESPACE_TERMINATING = "NamespaceTerminating"  # the Status cause of a create in a namespace being deleted
_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class Reconciler:
    """The operator's single writer of profile status and finalizers."""

    state: ClusterState
    api: KubeApi
    metrics: OperatorMetrics
    _queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    _pending: set[str] = field(default_factory=set)
    _outcomes: dict[str, tuple[str, Outcome]] = field(default_factory=dict)
    _version_seen_at: dict[str, tuple[str | None, float]] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)

    def mark(self, keys: set[str]) -> None:
        """Queue keys for reconciliation (each at most once while pending)."""
        for key in keys - self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    async def lead(self) -> None:
        """Reconcile every profile, then work forever (started each time this replica becomes the leader)."""
        self.mark(set(self.state.profiles))
        await self.run()

    async def run(self) -> None:
        """Work forever: one key at a time, retrying failed keys with a short backoff."""
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            profile = self.state.profiles.get(key)
            kind = profile.kind if profile else "unknown"
            self.metrics.reconciles.labels(kind).inc()
            try:
                await self.reconcile(key)
                self._failures.pop(key, None)
            except Exception as error:  # one failing key must never stop this, the only worker
                attempt = self._failures.get(key, 0)
                self._failures[key] = attempt + 1
                delay = _RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)]
                self.metrics.errors.labels(kind).inc()
                expected = isinstance(error, (TimeoutError, ApiError, OSError))
                log.warning("reconcile %s failed (%s); retrying in %.1fs", key, str(error) or type(error).__name__,
                            delay, exc_info=None if expected else error)
                asyncio.get_running_loop().call_later(delay, self.mark, {key})

    async def reconcile(self, key: str) -> None:
        """Bring one profile's status and finalizer in line with the cluster state."""
        profile = self.state.profiles.get(key)
        if profile is None:
            self._forget(key)
            return
        outcome = await self._outcome(profile)
        users = tuple(sorted(self.state.users.get(key, ())))
        if profile.deleting and not users:
            users = await self._confirmed_users(key)
            if not users:
                await self._release(profile)
                return
        if not profile.deleting and FINALIZER not in profile.finalizers:
            await self._set_finalizers(profile, [*profile.finalizers, FINALIZER])
        rendered = outcome.rendered
        state = aggregate.ProfileState(
            generation=profile.generation, content_hash=rendered.content_hash if rendered else None,
            localhost_profile=rendered.localhost_profile if rendered else None,
            findings=outcome.findings, deleting=profile.deleting, users=users)
        status = aggregate.status(state, self.state.nodes, self.state.node_entries(key))
        await self._publish(profile, status)

    async def _outcome(self, profile: Profile) -> Outcome:
        """Validate and render, cached by the content of the profile and its base chain."""
        fingerprint = json.dumps([profile.name, profile.namespace, *self._chain_specs(profile)], sort_keys=True)
        cached = self._outcomes.get(profile.key)
        if cached and cached[0] == fingerprint:
            return cached[1]
        outcome = await evaluate(profile.as_object(), self.state.lookup)
        self._outcomes[profile.key] = (fingerprint, outcome)
        return outcome

    def _chain_specs(self, profile: Profile) -> list[Any]:
        """The specs the rendering depends on: the profile's and its bases' (a bundled base never changes, and the
        state's lookup does not know it: the walk ends there)."""
        if profile.kind != schema.SECCOMP_PROFILE:
            return [profile.spec]
        bases = seccomp.walk_bases(profile.namespace or "", profile.name, profile.spec, self.state.lookup)
        return [profile.spec, *(spec for _, spec in bases)]

    async def _confirmed_users(self, key: str) -> tuple[str, ...]:
        """Before releasing a profile, list pods from the API server: the watch cache may lag."""
        users: list[str] = []
        params = {"limit": "500"}
        while True:
            page = await self.api.request("GET", "/api/v1/pods", params=params)
            for pod in page.get("items") or []:
                if key in podrefs.references(pod):
                    meta = pod["metadata"]
                    users.append(f"{meta['namespace']}/{meta['name']}")
                    self.state.apply_pod("ADDED", pod)
            token = page.get("metadata", {}).get("continue")
            if not token:
                return tuple(sorted(users))
            params = {"limit": "500", "continue": token}

    async def _release(self, profile: Profile) -> None:
        await self._set_finalizers(profile, [f for f in profile.finalizers if f != FINALIZER])
        await self._event(profile, "Normal", "Released", "no pod references the profile any more; deletion proceeds")

    async def _set_finalizers(self, profile: Profile, finalizers: list[str]) -> None:
        # resourceVersion makes the patch conditional: a concurrent change gives 409 and a fresh event.
        body = {"metadata": {"resourceVersion": profile.resource_version, "finalizers": finalizers}}
        try:
            await self.api.patch(resource_path(profile.kind, profile.namespace, profile.name), body)
        except ApiError as error:
            if error.status not in (404, 409):
                raise

    async def _publish(self, profile: Profile, status: dict[str, Any]) -> None:
        old = profile.status
        if _comparable(status) == _comparable({k: old.get(k) for k in status}):
            return
        status = aggregate.with_transition_times(status, old, clock.timestamp())
        path = resource_path(profile.kind, profile.namespace, profile.name, "status")
        try:
            await self.api.patch(path, {"status": status})
        except ApiError as error:
            if error.status == 404:
                return
            raise
        self.metrics.observe_phase(profile.key, profile.kind, status["phase"])
        self._observe_install_time(profile, status)
        if note := aggregate.event_for(old, status):
            await self._event(profile, note.type, note.reason, note.message)
        log.info("status %s", json.dumps({"profile": profile.key, "phase": status["phase"],
                                          "nodes": status.get("nodes"), "hash": status.get("contentHash")}))

    def _observe_install_time(self, profile: Profile, status: dict[str, Any]) -> None:
        content = status.get("contentHash")
        seen = self._version_seen_at.get(profile.key)
        if seen is None or seen[0] != content:
            seen = (content, time.monotonic())
            self._version_seen_at[profile.key] = seen
        if status["phase"] == aggregate.INSTALLED_PHASE and seen[1] >= 0:
            self.metrics.change_to_installed.labels(profile.kind).observe(time.monotonic() - seen[1])
            self._version_seen_at[profile.key] = (content, -1.0)

    async def _event(self, profile: Profile, event_type: str, reason: str, message: str) -> None:
        namespace = profile.namespace or "default"
        stamp = clock.timestamp()
        body = {"metadata": {"generateName": f"{profile.name}.", "namespace": namespace},
                "involvedObject": {"apiVersion": schema.API_VERSION, "kind": profile.kind, "name": profile.name,
                                   "namespace": profile.namespace, "uid": profile.uid},
                "type": event_type, "reason": reason, "message": message[:1024],
                "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
                "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1}
        try:
            await self.api.create(resource_path("Event", namespace), body)
        except ApiError as error:
            if NAMESPACE_TERMINATING in error.causes:  # a 403 that is no permission problem: nobody will read it
                log.debug("no event for %s: its namespace is being deleted", profile.key)
            else:
                log.warning("could not post event for %s: %s", profile.key, error)

    def _forget(self, key: str) -> None:
        self._outcomes.pop(key, None)
        self._version_seen_at.pop(key, None)
        self.metrics.forget(key)


def _comparable(status: dict[str, Any]) -> str:
    conditions = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []]
    return json.dumps({**status, "conditions": conditions}, sort_keys=True, default=str)



