"""Turns dirty profile keys into status patches, finalizer changes and Events.

Workers drain a queue of keys that watch events marked dirty; a key is never worked on by two workers at once, and
nothing is requeued on a timer except backoff and the publication delay below. A key is reconciled from the
in-memory ``ClusterState``; only writes go to the API server.

When it starts leading, the reconciler first evaluates every profile (a rendering equal to the published
``contentHash`` skips validation, see ``model.evaluate``) and gives the node view all renderings in one batch,
so statuses are computed against complete digests: a restart with current statuses writes nothing.

Status writes are coalesced: a profile that is merely *Installing* (its new version on some nodes, no failure)
is published only after it has been Installing for ``installing_delay`` seconds, and then at most once per that
delay. One change that every node installs within the delay costs one status write (and an Event only when the
phase changes), whatever the number of nodes. Until then the published status keeps its ``observedGeneration``,
so readers (the webhook among them) see that the newest generation is not reflected yet.
"""

from __future__ import annotations

import asyncio
import hashlib
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
from secprofiles.model.evaluate import evaluate
from secprofiles.model.findings import Finding
from secprofiles.resources import resource_path

log = logging.getLogger(__name__)

FINALIZER = "secprofiles.io/in-use-protection"
COMPONENT = "secprofiles-operator"
NAMESPACE_TERMINATING = "NamespaceTerminating"  # the Status cause of a create in a namespace being deleted
_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class Verdict:
    """What the operator keeps of one evaluation (not the rendered bytes: they can be large)."""

    content_hash: str | None
    localhost_profile: str | None
    findings: tuple[Finding, ...]


@dataclass
class Reconciler:
    """The operator's writer of profile status and finalizers."""

    state: ClusterState
    api: KubeApi
    metrics: OperatorMetrics
    workers: int = 4
    installing_delay: float = 1.0
    _queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    _queued: set[str] = field(default_factory=set)
    _working: set[str] = field(default_factory=set)
    _again: set[str] = field(default_factory=set)
    _verdicts: dict[str, tuple[bytes, Verdict]] = field(default_factory=dict)  # key -> (fingerprint, verdict)
    _version_seen_at: dict[str, tuple[str | None, float]] = field(default_factory=dict)
    _installing: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # key -> (hash, since, last)
    _held: set[str] = field(default_factory=set)  # keys with a publication timer set
    _failures: dict[str, int] = field(default_factory=dict)

    def mark(self, keys: set[str]) -> None:
        """Queue keys for reconciliation (each at most once while queued; again after its running turn)."""
        for key in keys:
            if key in self._working:
                self._again.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._queue.put_nowait(key)

    async def lead(self) -> None:
        """Evaluate every profile, reconcile every one, then work forever (each time this replica leads)."""
        started = time.monotonic()
        renderings: dict[str, str | None] = {}
        for number, (key, profile) in enumerate(list(self.state.profiles.items())):
            renderings[key] = (await self._verdict(profile)).content_hash
            if number % 100 == 99:
                await asyncio.sleep(0)  # the webhook and the watches keep going meanwhile
        self.state.view.set_renderings(renderings)
        log.info("evaluated %d profiles in %.1fs", len(renderings), time.monotonic() - started)
        self.mark(set(self.state.profiles))
        await asyncio.gather(*(self._work() for _ in range(self.workers)))

    async def _work(self) -> None:
        """One worker, forever: one key at a time, retrying failed keys with a short backoff."""
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._working.add(key)
            profile = self.state.profiles.get(key)
            kind = profile.kind if profile else "unknown"
            self.metrics.reconciles.labels(kind).inc()
            try:
                await self.reconcile(key)
                self._failures.pop(key, None)
            except Exception as error:  # one failing key must never stop a worker
                attempt = self._failures.get(key, 0)
                self._failures[key] = attempt + 1
                delay = _RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)]
                self.metrics.errors.labels(kind).inc()
                expected = isinstance(error, (TimeoutError, ApiError, OSError))
                log.warning("reconcile %s failed (%s); retrying in %.1fs", key, str(error) or type(error).__name__,
                            delay, exc_info=None if expected else error)
                asyncio.get_running_loop().call_later(delay, self.mark, {key})
            finally:
                self._working.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.mark({key})

    async def reconcile(self, key: str) -> None:
        """Bring one profile's status and finalizer in line with the cluster state."""
        profile = self.state.profiles.get(key)
        if profile is None:
            self._forget(key)
            return
        verdict = await self._verdict(profile)
        self.mark(self.state.set_rendering(key, verdict.content_hash) - {key})
        users = tuple(sorted(self.state.users.get(key, ())))
        if profile.deleting and not users:
            users = await self._confirmed_users(key)
            if not users:
                await self._release(profile)
                return
        if not profile.deleting and FINALIZER not in profile.finalizers:
            await self._set_finalizers(profile, [*profile.finalizers, FINALIZER])
        state = aggregate.ProfileState(
            generation=profile.generation, content_hash=verdict.content_hash,
            localhost_profile=verdict.localhost_profile, findings=verdict.findings, deleting=profile.deleting,
            users=users)
        await self._publish(profile, aggregate.status(state, self.state.node_counts(key)))

    async def _verdict(self, profile: Profile) -> Verdict:
        """Validate and render, cached by the content of the profile and its base chain. A rendering equal to the
        published ``contentHash`` (this operator validated it before, e.g. before a restart) is not checked again."""
        fingerprint = hashlib.sha256(json.dumps([profile.name, profile.namespace, *self._chain_specs(profile)],
                                                sort_keys=True).encode()).digest()
        cached = self._verdicts.get(profile.key)
        if cached and cached[0] == fingerprint:
            return cached[1]
        outcome = await evaluate(profile.as_object(), self.state.lookup,
                                 validated_hash=profile.status.get("contentHash"))
        rendered = outcome.rendered
        verdict = Verdict(rendered.content_hash if rendered else None, rendered.localhost_profile if rendered else None,
                          outcome.findings)
        self._verdicts[profile.key] = (fingerprint, verdict)
        return verdict

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
            self._installing.pop(profile.key, None)
            return
        if (wait := self._installing_wait(profile.key, status)) > 0:
            if profile.key not in self._held:
                self._held.add(profile.key)
                asyncio.get_running_loop().call_later(wait, self._release_hold, profile.key)
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

    def _release_hold(self, key: str) -> None:
        self._held.discard(key)
        self.mark({key})

    def _installing_wait(self, key: str, status: dict[str, Any]) -> float:
        """Seconds to hold an Installing status back (0: publish now); see the module docstring."""
        if status["phase"] != aggregate.INSTALLING:
            self._installing.pop(key, None)
            return 0.0
        now = time.monotonic()
        content_hash, since, last = self._installing.get(key, ("", now, 0.0))
        if content_hash != status["contentHash"]:
            since, last = now, 0.0
        wait = max(since + self.installing_delay, last + self.installing_delay) - now
        self._installing[key] = (status["contentHash"], since, now if wait <= 0 else last)
        return max(wait, 0.0)

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
        self.mark(self.state.set_rendering(key, None) - {key})
        for store in (self._verdicts, self._version_seen_at, self._installing):
            store.pop(key, None)
        self.metrics.forget(key)


def _comparable(status: dict[str, Any]) -> str:
    conditions = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []]
    return json.dumps({**status, "conditions": conditions}, sort_keys=True, default=str)



