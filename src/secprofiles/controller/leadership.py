"""Leader election on a ``coordination.k8s.io`` Lease: one replica writes, every replica watches.

Every replica keeps the cluster state warm and serves the admission webhook from it; only the replica holding
the Lease runs the writers (the reconciler: profile status, finalizers, Events). The Lease is taken and renewed
with ``resourceVersion``-guarded updates, so two replicas starting at the same moment cannot both win (Kopf's
peering could: a paused replica could keep one watch running, and its paused watches left its webhook without
state). Expiry is judged like client-go does, by how long this replica has seen the record unchanged on its own
monotonic clock, so clock skew between nodes does not matter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from secprofiles.kube.client import ApiError, KubeApi
from secprofiles.resources import resource_path

log = logging.getLogger(__name__)

Work = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class LeaseSettings:
    """Which Lease, who this replica is, and the timing (client-go's defaults: 15 s / 10 s / 2 s)."""

    namespace: str
    identity: str
    name: str = "secprofiles-operator"
    duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @classmethod
    def scaled(cls, namespace: str, identity: str, name: str, duration: float) -> LeaseSettings:
        """Settings for a lease ``duration`` with client-go's proportions between the three times."""
        return cls(namespace, identity, name, duration=duration, renew_deadline=duration * 2 / 3,
                   retry_period=duration * 2 / 15)


def default_identity() -> str:
    """The pod's name (a restarted container keeps the lease it held), else host name and a random suffix."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class Step(enum.Enum):
    """What a replica does with the Lease as it finds it."""

    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # this replica holds it
    TAKE = "take"  # nobody holds it, or the holder stopped renewing
    WAIT = "wait"  # another replica holds it


@dataclass(frozen=True)
class Record:
    """The parts of a Lease election decides on."""

    holder: str
    renew_time: str
    duration: float

    @classmethod
    def of(cls, lease: dict[str, Any]) -> Record:
        """The record of a Lease object."""
        spec = lease.get("spec") or {}
        return cls(str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""),
                   float(spec.get("leaseDurationSeconds") or 0))


def next_step(record: Record | None, identity: str, unchanged_for: float) -> Step:
    """Decide from the Lease ``record`` (None: none exists) and how long this replica has seen it unchanged."""
    if record is None:
        return Step.CREATE
    if record.holder == identity:
        return Step.RENEW
    if not record.holder or unchanged_for > record.duration:
        return Step.TAKE
    return Step.WAIT


def _micro_time(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leadership:
    """Campaigns for the Lease and runs the registered work only while holding it.

    Without settings (``--standalone``) the work runs at once and for good: a single replica needs no Lease.
    """

    def __init__(self, settings: LeaseSettings | None) -> None:
        self.settings = settings
        self.leading = False
        self._works: list[Work] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._observed: Record | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._campaign: asyncio.Task[None] | None = None

    def while_leading(self, work: Work) -> None:
        """Run ``work`` whenever this replica leads (again after each new election); cancelled when it stops."""
        self._works.append(work)
        if self.leading:
            self._tasks.append(asyncio.create_task(work()))

    def start(self, api: KubeApi) -> None:
        """Start campaigning (standalone: start the work at once)."""
        self._campaign = asyncio.create_task(self._run(api))

    async def stop(self, api: KubeApi) -> None:
        """Stop the work and campaigning; give the Lease up so another replica takes over at once, not after it
        expires."""
        was_leading = self.leading
        if self._campaign is not None:
            self._campaign.cancel()
            await asyncio.gather(self._campaign, return_exceptions=True)
        if self.settings is not None and was_leading:
            await self._release(api, self.settings)

    async def _run(self, api: KubeApi) -> None:
        try:
            if self.settings is None:
                self._start_leading("standalone")
                await asyncio.Event().wait()
            else:
                await self._campaign_forever(api, self.settings)
        finally:
            self._stop_leading("shutting down")

    async def _campaign_forever(self, api: KubeApi, settings: LeaseSettings) -> None:
        while True:
            try:
                await self._try_once(api, settings)
            except (ApiError, OSError, TimeoutError) as error:
                log.warning("lease %s/%s: %s", settings.namespace, settings.name, error)
            if self.leading and time.monotonic() - self._renewed_at > settings.renew_deadline:
                self._stop_leading(f"the lease was not renewed for {settings.renew_deadline:g} s")
            # Jitter keeps replicas that started together from asking in lockstep.
            delay = settings.retry_period if self.leading else settings.retry_period * random.uniform(1.0, 1.2)
            await asyncio.sleep(delay)

    async def _release(self, api: KubeApi, settings: LeaseSettings) -> None:
        path = resource_path("Lease", settings.namespace, settings.name)
        try:
            lease = await api.get(path)
            if lease and Record.of(lease).holder == settings.identity:
                lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1,
                                 "renewTime": _micro_time(dt.datetime.now(dt.UTC))}
                await api.request("PUT", path, lease)
                log.info("released the lease %s/%s", settings.namespace, settings.name)
        except (ApiError, OSError, TimeoutError) as error:
            log.warning("lease %s/%s not released (%s): another replica takes over when it expires",
                        settings.namespace, settings.name, error)

    async def _try_once(self, api: KubeApi, settings: LeaseSettings) -> None:
        collection = resource_path("Lease", settings.namespace)
        lease = await api.get(f"{collection}/{settings.name}")
        record = Record.of(lease) if lease else None
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        step = next_step(record, settings.identity, now - self._observed_at)
        if step is Step.WAIT:
            if self.leading:
                self._stop_leading(f"the lease is held by {record.holder if record else '?'}")
            return
        stamp = _micro_time(dt.datetime.now(dt.UTC))
        spec: dict[str, Any] = {"holderIdentity": settings.identity, "leaseDurationSeconds": round(settings.duration),
                                "renewTime": stamp}
        if step is Step.CREATE:
            body: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                    "metadata": {"name": settings.name, "namespace": settings.namespace},
                                    "spec": {**spec, "acquireTime": stamp, "leaseTransitions": 0}}
            written = await self._write(api.create(collection, body))
        else:
            assert lease is not None
            previous = lease.get("spec") or {}
            if step is Step.TAKE:
                spec.update(acquireTime=stamp, leaseTransitions=int(previous.get("leaseTransitions") or 0) + 1)
            # The resourceVersion read above makes this update fail if another replica wrote in between.
            written = await self._write(api.request("PUT", f"{collection}/{settings.name}",
                                                    {**lease, "spec": {**previous, **spec}}))
        if written:
            self._renewed_at = time.monotonic()
            self._observed, self._observed_at = Record.of(written), self._renewed_at
            if not self.leading:
                self._start_leading(f"took the lease {settings.namespace}/{settings.name}")

    @staticmethod
    async def _write(request: Awaitable[Any]) -> dict[str, Any] | None:
        try:
            return dict(await request)
        except ApiError as error:
            if error.status == 409:  # another replica created or updated it first: it leads
                return None
            raise

    def _start_leading(self, why: str) -> None:
        log.info("leading: %s", why)
        self.leading = True
        self._tasks = [asyncio.create_task(work()) for work in self._works]

    def _stop_leading(self, why: str) -> None:
        if not self.leading:
            return
        log.warning("no longer leading: %s; the writers stop", why)
        self.leading = False
        for task in self._tasks:
            task.cancel()
        self._tasks = []
