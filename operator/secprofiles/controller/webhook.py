"""The pod-binding admission webhook: Kopf wiring, serving certificate upkeep, ProfileBinding status.

The mutating handler answers from the in-memory ``ClusterState`` only (bindings and profiles, fed by watch
events) and never waits for a write: bound-pod counts go to a writer that coalesces them into one status
patch per binding and interval. The operator does not create webhook configurations (no Kopf managed mode);
it injects its CA into the shipped ``MutatingWebhookConfiguration``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import kopf
from prometheus_client import Histogram

from secprofiles import binding, nodereport, schema
from secprofiles.controller.certificates import (
    CERT_FILE,
    KEY_FILE,
    CertSource,
    FileSource,
    SelfManaged,
    inject_ca_bundle,
)
from secprofiles.controller.reconciler import now
from secprofiles.controller.state import ClusterState
from secprofiles.kubeapi import ApiError, Credentials, KubeApi, resource_path

log = logging.getLogger(__name__)

HANDLER_ID = "bind-pods"  # also the URL path Kopf serves it at: /bind-pods
HANDLER_SECONDS = Histogram("secprofiles_webhook_handler_seconds", "Time to decide one pod admission",
                            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25))


@dataclass(frozen=True)
class WebhookOptions:
    """How the webhook is served and where its certificate comes from."""

    port: int
    cert_dir: Path
    host: str = "0.0.0.0"  # listen address
    cert_source: str = "self"  # "self": CA and certificate in a Secret; "files": mounted from cert-manager
    config_name: str = "secprofiles"
    namespace: str = "secprofiles-system"
    service: str = "secprofiles-webhook"
    secret_name: str = "secprofiles-webhook-tls"
    server_version: str | None = None  # e.g. "v1.29.0": skips /version (tests simulate older servers)
    refresh_interval: float = 60.0  # certificate renewal check and caBundle re-injection
    status_interval: float = 1.0  # coalescing window for ProfileBinding status writes

    def hosts(self) -> list[str]:
        """Names the serving certificate must carry: the Service's DNS names and the listen address."""
        svc, ns = self.service, self.namespace
        names = [f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local", f"{svc}.{ns}", svc, "localhost", "127.0.0.1"]
        if self.host not in ("0.0.0.0", "::", "", *names):
            names.append(self.host)
        return names


def has_apparmor_field(git_version: str) -> bool:
    """Whether an API server of this version has ``securityContext.appArmorProfile`` (1.30+)."""
    match = re.match(r"v?(\d+)\.(\d+)", git_version)
    return match is not None and (int(match[1]), int(match[2])) >= (1, 30)


class BindingStatusWriter:
    """ProfileBinding status: bound-pod counts (coalesced) and problems, written by one background task.

    Every replica serves the webhook, so every replica runs one: each adds the pods it admitted to the count
    it reads fresh, in an update guarded by that read's resourceVersion (a conflict is retried, never lost).
    """

    def __init__(self, state: ClusterState, api: KubeApi, interval: float) -> None:
        self.state, self.api, self.interval = state, api, interval
        self._dirty: set[str] = set()
        self._pending: Counter[str] = Counter()
        self._last_bound: dict[str, str] = {}
        self._wake = asyncio.Event()

    def mark(self, keys: set[str]) -> None:
        """Recompute these bindings' status soon."""
        if keys:
            self._dirty |= keys
            self._wake.set()

    def bound(self, keys: set[str]) -> None:
        """Count one pod bound by each of these bindings (called from the admission handler: no I/O)."""
        stamp = now()
        for key in keys:
            self._pending[key] += 1
            self._last_bound[key] = stamp
        self.mark(keys)

    def forget(self, key: str) -> None:
        """A binding was deleted: a new one of the same name starts counting afresh."""
        for store in (self._pending, self._last_bound):
            store.pop(key, None)

    async def run(self) -> None:
        """Forever: wait for work, let a burst of admissions accumulate, write."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.interval)
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for key in sorted(dirty):
                try:
                    await self._write(key)
                except ApiError as error:
                    if error.status != 409:  # a conflict is another replica's write: read again and retry
                        log.warning("status of ProfileBinding %s not written (%s); retrying", key, error)
                    self.mark({key})
                except (OSError, TimeoutError) as error:
                    log.warning("status of ProfileBinding %s not written (%s); retrying", key, error)
                    self.mark({key})

    async def _write(self, key: str) -> None:
        record = self.state.binding_record(key)
        if record is None:
            self.forget(key)
            return
        path = resource_path(schema.PROFILE_BINDING, record.binding.namespace, record.binding.name)
        current = await self.api.get(path)  # fresh: the count in the watched copy may be behind another replica's
        if current is None:
            self.forget(key)
            return
        meta, before = current["metadata"], current.get("status") or {}
        status: dict[str, Any] = {}
        pending = self._pending.get(key, 0)
        if pending:
            status["boundPods"] = int(before.get("boundPods") or 0) + pending
            status["lastBoundTime"] = self._last_bound[key]
        problem = binding.problem(record.binding, self.state.profile_infos())
        problems = [problem] if problem else []
        if problems != (before.get("problems") or []):
            status["problems"] = problems or None  # merge patch: None removes the field
        if before.get("observedGeneration") != meta.get("generation"):
            status["observedGeneration"] = meta.get("generation")
        if not status:
            return
        try:
            await self.api.patch(f"{path}/status",
                                 {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status})
        except ApiError as error:
            if error.status == 404:
                self.forget(key)
                return
            raise
        if pending:
            self._pending[key] -= pending  # admissions during the write stay pending


def register_webhook(registry: kopf.OperatorRegistry, state: ClusterState, options: WebhookOptions,
                     kubeconfig: str | None = None) -> None:
    """Add the webhook's handlers to ``registry``: serving, certificates, binding watch, status."""
    runtime: dict[str, Any] = {}

    @kopf.on.startup(registry=registry)
    async def start_webhook(settings: kopf.OperatorSettings, **_: Any) -> None:
        api = KubeApi(Credentials.auto(kubeconfig), user_agent="secprofiles-webhook")
        version = options.server_version or str((await api.request("GET", "/version"))["gitVersion"])
        runtime["apparmor_field"] = has_apparmor_field(version)
        await seed_profiles_and_bindings(state, api)
        source: CertSource = (SelfManaged(api, options.namespace, options.secret_name, options.cert_dir,
                                          options.hosts())
                              if options.cert_source == "self" else FileSource(options.cert_dir))
        await _refresh(source, api, options.config_name)
        # Kopf re-reads these files and restarts its listener when they change (renewal).
        settings.admission.server = kopf.WebhookServer(
            addr=options.host, port=options.port, certfile=options.cert_dir / CERT_FILE,
            pkeyfile=options.cert_dir / KEY_FILE, file_check_interval=min(options.refresh_interval, 10.0))
        writer = BindingStatusWriter(state, api, options.status_interval)
        writer.mark({record.binding.key for records in state.bindings.values() for record in records.values()})
        runtime.update(api=api, writer=writer, tasks=[asyncio.create_task(writer.run()),
                                                      asyncio.create_task(_maintain(source, api, options))])
        log.info("webhook on %s:%d (API server %s: AppArmor as %s)", options.host, options.port, version,
                 "field" if runtime["apparmor_field"] else "annotation")

    @kopf.on.cleanup(registry=registry)
    async def stop_webhook(**_: Any) -> None:
        tasks = runtime.get("tasks") or []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if "api" in runtime:
            await runtime["api"].close()

    @kopf.on.event(schema.GROUP, schema.VERSION, schema.plural(schema.PROFILE_BINDING), registry=registry)
    async def binding_event(event: kopf.RawEvent, **_: Any) -> None:
        kind = event.get("type") or "ADDED"  # Kopf reports the initial listing with type None
        key = state.apply_binding(kind, dict(event["object"]))
        if "writer" in runtime:
            if kind == "DELETED":
                runtime["writer"].forget(key)
            else:
                runtime["writer"].mark({key})

    @kopf.on.event(schema.GROUP, schema.VERSION, schema.plural(schema.SECCOMP_PROFILE), registry=registry)
    @kopf.on.event(schema.GROUP, schema.VERSION, schema.plural(schema.APPARMOR_PROFILE), registry=registry)
    async def profile_changed(event: kopf.RawEvent, **_: Any) -> None:
        # The operator's own handler updates the state; this one refreshes the problems of dependent bindings.
        if "writer" in runtime:
            runtime["writer"].mark(state.bindings_of_profile(nodereport.key_of(dict(event["object"]))))

    @kopf.on.mutate("", "v1", "pods", operations=["CREATE"], id=HANDLER_ID, registry=registry)
    async def bind_pods(body: kopf.Body, patch: kopf.Patch, warnings: list[str], dryrun: bool, **_: Any) -> None:
        started = time.perf_counter()
        pod = dict(body)
        namespace = str((pod.get("metadata") or {}).get("namespace") or "")
        decision = binding.decide(pod, state.bindings_in(namespace), state.profile_infos(),
                                  runtime.get("apparmor_field", True))
        warnings.extend(decision.warnings)
        HANDLER_SECONDS.observe(time.perf_counter() - started)
        if decision.rejection:
            raise kopf.AdmissionError(decision.rejection, code=403)
        if decision.patch:
            patch.fns.append(partial(_apply, decision.patch))
        if decision.bound and not dryrun and "writer" in runtime:
            runtime["writer"].bound(decision.bound)


async def seed_profiles_and_bindings(state: ClusterState, api: KubeApi) -> None:
    """List what the webhook decides from before it serves.

    Kopf opens the webhook server once the startup handlers are done, while its watches may still be working
    through their first listing (seconds, with thousands of profiles): a pod admitted from that half-built state
    would be bound to nothing, or refused under a ``Reject`` binding. The watches replay the same objects
    afterwards, which the state applies idempotently.
    """
    for kind in (schema.SECCOMP_PROFILE, schema.APPARMOR_PROFILE, schema.PROFILE_BINDING):
        listing = await api.request("GET", resource_path(kind))
        for item in listing.get("items") or []:
            item["kind"] = kind  # list items omit it
            if kind == schema.PROFILE_BINDING:
                state.apply_binding("ADDED", item)
            else:
                state.apply_profile("ADDED", item)


def _apply(ops: binding.JsonPatch, body: Any) -> None:
    binding.apply_patch(body, ops)


async def _refresh(source: CertSource, api: KubeApi, config_name: str) -> None:
    bundle = await source.refresh()
    if bundle:
        try:
            await inject_ca_bundle(api, config_name, bundle)
        except ApiError as error:  # e.g. RBAC; retried on the next refresh, the server serves meanwhile
            log.warning("caBundle not injected into %s: %s", config_name, error)


async def _maintain(source: CertSource, api: KubeApi, options: WebhookOptions) -> None:
    """Renew the certificate before expiry and re-inject the CA (e.g. after a GitOps tool reset caBundle)."""
    while True:
        await asyncio.sleep(options.refresh_interval)
        try:
            await _refresh(source, api, options.config_name)
        except (ApiError, OSError, TimeoutError) as error:
            log.warning("webhook certificate refresh failed: %s", error)
