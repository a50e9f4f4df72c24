"""Kopf wiring: watch events (and, for the large node reports, the lean reflector of ``kubeapi``) feed the cluster
state; the reconciler does the rest.

Handlers are ``on.event`` only: they keep no per-object state in the objects (no diff-base or progress
annotations) and add no Kopf finalizer; the operator's only write to user objects besides ``status`` is
its one finalizer, managed by the reconciler. Every replica watches (warm state for the webhook and a fast
failover); only the holder of the Lease runs the reconciler (``leadership``), so Kopf itself runs standalone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from secprofiles import apparmor_parser, schema
from secprofiles.controller.leadership import Leadership, LeaseSettings
from secprofiles.controller.reconciler import Reconciler
from secprofiles.controller.state import ClusterState
from secprofiles.controller.webhook import WebhookOptions, register_webhook
from secprofiles.kubeapi import ApiError, Credentials, KubeApi, list_and_watch, resource_path

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


def build_registry(kubeconfig: str | None = None, webhook: WebhookOptions | None = None,
                   lease: LeaseSettings | None = None) -> kopf.OperatorRegistry:
    """A registry with the operator's handlers (explicit, so tests can run several operators in one process).

    With ``webhook``, it also serves the pod-binding admission webhook from the same state. With ``lease``, the
    reconciler runs only while this replica holds that Lease; without, at once (a single replica).
    """
    registry = kopf.OperatorRegistry()
    state = ClusterState()
    leadership = Leadership(lease)
    if webhook is not None:
        register_webhook(registry, state, webhook, kubeconfig)
    runtime: dict[str, Any] = {}

    def mark(keys: set[str]) -> None:
        if keys and "reconciler" in runtime:
            runtime["reconciler"].mark(keys)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Explicit, so Kopf never falls back to the heavy official client for credentials.
        return kopf.login_with_kubeconfig(**kwargs) or kopf.login_with_service_account(**kwargs)

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)
        if not apparmor_parser.available():  # the operator's image has it; said once, not per profile
            log.warning("%s; AppArmorProfiles are checked by the model's rules only", apparmor_parser.NOT_INSTALLED)
        api = KubeApi(Credentials.auto(kubeconfig), user_agent="secprofiles-operator")
        await seed_nodes_and_reports(state, api)
        reconciler = Reconciler(state, api)
        runtime.update(api=api, reconciler=reconciler,
                       reports=asyncio.create_task(list_and_watch(api, resource_path(schema.NODE_PROFILE_STATUS),
                                                                  report_event)))
        leadership.while_leading(reconciler.lead)
        leadership.start(api)

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        if "api" in runtime:
            await leadership.stop(runtime["api"])
            runtime["reports"].cancel()
            await asyncio.gather(runtime["reports"], return_exceptions=True)
            await runtime["api"].close()

    @kopf.on.event(schema.GROUP, schema.VERSION, schema.plural(schema.SECCOMP_PROFILE), registry=registry)
    @kopf.on.event(schema.GROUP, schema.VERSION, schema.plural(schema.APPARMOR_PROFILE), registry=registry)
    async def profile_event(event: kopf.RawEvent, **_: Any) -> None:
        mark(state.apply_profile(_type(event), dict(event["object"])))

    # Node reports come through the lean reflector, not Kopf: one holds an entry per profile (~750 KiB at 5,000
    # profiles) and Kopf deep-copies every event body, which set the operator's peak memory at scale.
    async def report_event(kind: str, obj: dict[str, Any]) -> None:
        mark(state.apply_report(kind, obj))

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node_event(event: kopf.RawEvent, **_: Any) -> None:
        mark(state.apply_node(_type(event), dict(event["object"])))

    @kopf.on.event("", "v1", "pods", registry=registry)
    async def pod_event(event: kopf.RawEvent, **_: Any) -> None:
        mark(state.apply_pod(_type(event), dict(event["object"])))

    return registry


async def seed_nodes_and_reports(state: ClusterState, api: KubeApi) -> None:
    """List nodes and node reports once before any profile is reconciled.

    Kopf starts all watches together: without this, a restarted operator can see a profile before the node
    reports and publish a spurious "Installing 0/N" (a status write and an Event) for it. The watches replay
    the same objects afterwards, which the state applies idempotently.
    """
    try:
        nodes = await api.request("GET", resource_path("Node"))
        reports = await api.request("GET", resource_path(schema.NODE_PROFILE_STATUS))
    except (ApiError, OSError) as error:
        log.warning("starting without the initial node listing (%s): the first statuses may count nodes late", error)
        return
    for node in nodes.get("items", []):
        state.apply_node("ADDED", node)
    for report in reports.get("items", []):
        state.apply_report("ADDED", report)


def _type(event: kopf.RawEvent) -> str:
    # Kopf reports objects of the initial listing with type None.
    return event.get("type") or "ADDED"
