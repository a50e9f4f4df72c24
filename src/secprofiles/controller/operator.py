"""One operator: its Kopf registration, and what its handlers share.

Watch events (and, for the large node reports, the lean reflector of ``kube.client``) feed one ``ClusterState``;
the reconciler writes profile status; the admission webhook, when enabled, decides pod admissions from the same
state. Every event is registered once, here.

Handlers are ``on.event`` only: they keep no per-object state in the objects (no diff-base or progress
annotations) and add no Kopf finalizer; the operator's only write to user objects besides ``status`` is
its one finalizer, managed by the reconciler. Every replica watches (warm state for the webhook and a fast
failover); only the holder of the Lease runs the reconciler (``leadership``), so Kopf itself runs standalone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import kopf

from secprofiles.controller.admission.webhook import HANDLER_ID, Admission, WebhookOptions
from secprofiles.controller.leadership import Leadership, LeaseSettings
from secprofiles.controller.metrics import OperatorMetrics
from secprofiles.controller.reconciler import Reconciler
from secprofiles.controller.recordings import Recordings
from secprofiles.controller.state import ClusterState
from secprofiles.kube.client import ApiError, Credentials, KubeApi, list_and_watch
from secprofiles.model import apparmor_parser, keys, schema
from secprofiles.objects import Object
from secprofiles.resources import resource_path

log = logging.getLogger(__name__)
API_RETRY_BACKOFFS = (0.5, 1.0, 2.0, 4.0, *[5.0] * 9)


def configure(settings: kopf.OperatorSettings) -> None:
    """Kopf settings: nothing stored in annotations, no event spam, prompt reconnects.

    Kopf's own finalizer name stays distinct from ours: Kopf strips its finalizer from objects whose
    handlers do not need one, and ours must survive until no pod uses the profile.
    """
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.posting.enabled = False  # the reconciler posts the Events a person cares about
    settings.watching.server_timeout = 300
    settings.watching.reconnect_backoff = 0.2
    # Kopf's default retries (1, 1, 2, 3, 5, 8, 13, 21 s) can leave a watch 20 s behind an API server that
    # is back; the same ~50 s of patience, with at most 5 s between attempts.
    settings.networking.error_backoffs = API_RETRY_BACKOFFS


@dataclass
class Running:
    """What the startup handler builds and the cleanup handler releases."""

    api: KubeApi
    reconciler: Reconciler
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Operator:
    """The operator's state, metrics, leadership and (with ``webhook``) admission, and their Kopf registration.

    With ``lease``, the reconciler runs only while this replica holds that Lease; without, at once (a single
    replica). Several operators can run in one process (tests): nothing here is global.
    """

    def __init__(self, kubeconfig: str | None = None, webhook: WebhookOptions | None = None,
                 lease: LeaseSettings | None = None, recording: bool = False) -> None:
        self.kubeconfig = kubeconfig
        self.state = ClusterState()
        self.metrics = OperatorMetrics()
        self.leadership = Leadership(lease)
        self.metrics.leader_from(lambda: self.leadership.leading)
        # ProfileRecordings (manifests/overlays/recording): their own watches, writer and webhook decision.
        self.recordings = Recordings(kubeconfig, self.state, self.leadership) if recording else None
        self.admission = Admission(webhook, self.state, self.metrics, self.recordings) \
            if webhook is not None else None
        self.running: Running | None = None

    def mark(self, profile_keys: set[str]) -> None:
        """Queue profiles for reconciliation (before start-up, the first leadership marks them all anyway)."""
        if profile_keys and self.running is not None:
            self.running.reconciler.mark(profile_keys)

    async def start(self, settings: kopf.OperatorSettings) -> None:
        """Connect, list what decisions depend on, start the report reflector, leadership and the webhook.

        Kopf runs this startup handler again after a failure: what already started is kept, not started twice.
        """
        configure(settings)
        if self.running is None:
            if not apparmor_parser.available():  # the operator's image has it; said once, not per profile
                log.warning("%s; AppArmorProfiles are checked by the model's rules only",
                            apparmor_parser.NOT_INSTALLED)
            api = KubeApi(Credentials.auto(self.kubeconfig), user_agent="secprofiles-operator")
            try:
                await seed(self.state, api, admission=self.admission is not None)
            except BaseException:
                await api.close()
                raise
            reconciler = Reconciler(self.state, api, self.metrics)
            reports = list_and_watch(api, resource_path(schema.NODE_PROFILE_STATUS), self._report_event)
            self.running = Running(api, reconciler, [asyncio.create_task(reports)])
            self.leadership.while_leading(reconciler.lead)
            self.leadership.start(api)
        if self.admission is not None:
            await self.admission.start(self.running.api, settings)

    async def stop(self) -> None:
        """Give the Lease up, stop every task, close the connection."""
        if self.running is None:
            return
        await self.leadership.stop(self.running.api)
        if self.admission is not None:
            await self.admission.stop()
        for task in self.running.tasks:
            task.cancel()
        await asyncio.gather(*self.running.tasks, return_exceptions=True)
        await self.running.api.close()

    # Node reports come through the lean reflector, not Kopf: every profile change brings one event per node, and
    # Kopf deep-copies every event body and keeps per-object handler state the reports do not need.
    async def _report_event(self, event_type: str, obj: Object) -> None:
        self.mark(self.state.apply_report(event_type, obj))

    def profile_event(self, event_type: str, obj: Object) -> None:
        """A SeccompProfile or AppArmorProfile event."""
        self.mark(self.state.apply_profile(event_type, obj))
        if self.admission is not None:
            self.admission.profile_changed(keys.key_of(obj))

    def registry(self) -> kopf.OperatorRegistry:
        """A Kopf registry with this operator's handlers (explicit, so one process can run several)."""
        registry = kopf.OperatorRegistry()
        state, admission = self.state, self.admission

        @kopf.on.login(registry=registry)
        def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            # Explicit, so Kopf never falls back to the heavy official client for credentials.
            return kopf.login_with_kubeconfig(**kwargs) or service_address(kopf.login_with_service_account(**kwargs))

        @kopf.on.startup(registry=registry)
        async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
            await self.start(settings)

        @kopf.on.cleanup(registry=registry)
        async def stop(**_: Any) -> None:
            await self.stop()

        @kopf.on.event(schema.GROUP, schema.VERSION, schema.plural(schema.SECCOMP_PROFILE), registry=registry)
        @kopf.on.event(schema.GROUP, schema.VERSION, schema.plural(schema.APPARMOR_PROFILE), registry=registry)
        async def profile_event(event: kopf.RawEvent, **_: Any) -> None:
            self.profile_event(_type(event), dict(event["object"]))

        @kopf.on.event("", "v1", "nodes", registry=registry)
        async def node_event(event: kopf.RawEvent, **_: Any) -> None:
            self.mark(state.apply_node(_type(event), dict(event["object"])))

        @kopf.on.event("", "v1", "pods", registry=registry)
        async def pod_event(event: kopf.RawEvent, **_: Any) -> None:
            self.mark(state.apply_pod(_type(event), dict(event["object"])))

        if admission is not None:
            @kopf.on.event(schema.GROUP, schema.VERSION, schema.plural(schema.PROFILE_BINDING), registry=registry)
            async def binding_event(event: kopf.RawEvent, **_: Any) -> None:
                admission.binding_event(_type(event), dict(event["object"]))

            @kopf.on.mutate("", "v1", "pods", operations=["CREATE"], id=HANDLER_ID, registry=registry)
            async def bind_pods(body: kopf.Body, patch: kopf.Patch, warnings: list[str], dryrun: bool,
                                **_: Any) -> None:
                admission.admit(dict(body), patch, warnings, dryrun)

        if self.recordings is not None:
            self.recordings.register(registry)
        return registry


def service_address(info: kopf.ConnectionInfo | None) -> kopf.ConnectionInfo | None:
    """Kopf's in-cluster login names ``https://kubernetes.default.svc``, which needs cluster DNS (without it the
    operator crash-looped); use the ``kubernetes`` Service's address the kubelet gives every pod, as
    ``Credentials.in_cluster`` does, so the operator depends on no DNS."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if info is None or not host:
        return info
    host = f"[{host}]" if ":" in host else host
    return dataclasses.replace(info, server=f"https://{host}:{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}")


async def seed(state: ClusterState, api: KubeApi, admission: bool) -> None:
    """List what decisions depend on, once, before anything is reconciled or admitted.

    Kopf starts all watches together: without this, a restarted operator can see a profile before the node
    reports and publish a spurious "Installing 0/N" (a status write and an Event) for it. The profiles are listed
    too, so the reconciler's first batch of renderings is complete: with only the profiles Kopf's watch had
    delivered so far, a bucket's expected digest lacks the rest and none of its profiles is confirmed until they
    arrive (measured at 5,000 profiles: ~20 % of them published Installing and back). And Kopf opens the
    webhook server once the startup handlers are done, while its watches may still be working through their first
    listing (seconds, with thousands of profiles): a pod admitted from that half-built state would be bound to
    nothing, or refused under a ``Reject`` binding, so with ``admission`` profiles and bindings are listed too,
    and a failed listing fails the start-up (Kopf retries it). The watches replay the same objects afterwards,
    which the state applies idempotently.
    """
    try:
        nodes, reports = await _items(api, "Node"), await _items(api, schema.NODE_PROFILE_STATUS)
        profiles = [*await _items(api, schema.SECCOMP_PROFILE), *await _items(api, schema.APPARMOR_PROFILE)]
    except (ApiError, OSError) as error:
        if admission:
            raise
        log.warning("starting without the initial listing (%s): the first statuses may count nodes late", error)
        nodes, reports, profiles = [], [], []
    for node in nodes:
        state.apply_node("ADDED", node)
    for report in reports:
        state.apply_report("ADDED", report)
    for profile in profiles:
        state.apply_profile("ADDED", profile)
    if admission:
        for binding in await _items(api, schema.PROFILE_BINDING):
            state.apply_binding("ADDED", binding)


async def _items(api: KubeApi, kind: str) -> list[Object]:
    items: list[Object] = (await api.request("GET", resource_path(kind))).get("items") or []
    for item in items:
        item["kind"] = kind  # list items omit it
    return items


def _type(event: kopf.RawEvent) -> str:
    # Kopf reports objects of the initial listing with type None.
    return event.get("type") or "ADDED"
