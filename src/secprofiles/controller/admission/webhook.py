"""The pod-binding admission webhook: serving certificate upkeep, ProfileBinding status, the decision per pod.

The mutating handler answers from the in-memory ``ClusterState`` only (bindings and profiles, fed by watch
events) and never waits for a write: bound-pod counts go to a writer that coalesces them into one status
patch per binding and interval. The operator does not create webhook configurations (no Kopf managed mode);
it injects its CA into the shipped ``MutatingWebhookConfiguration``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import kopf

from secprofiles.controller.admission import binding
from secprofiles.controller.admission.certificates import (
    CERT_FILE,
    KEY_FILE,
    CertSource,
    FileSource,
    SelfManaged,
    inject_ca_bundle,
)
from secprofiles.controller.admission.recording import PodRecorder
from secprofiles.controller.metrics import OperatorMetrics
from secprofiles.controller.state import ClusterState
from secprofiles.kube import clock
from secprofiles.kube.client import ApiError, KubeApi
from secprofiles.model import schema
from secprofiles.objects import Object
from secprofiles.resources import resource_path

log = logging.getLogger(__name__)

HANDLER_ID = "bind-pods"  # also the URL path Kopf serves it at: /bind-pods


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
        stamp = clock.timestamp()
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


class Admission:
    """The webhook's part of a running operator: certificate upkeep, binding status, and the decision per pod.

    It decides from the operator's ``ClusterState`` (the operator lists profiles and bindings into it before
    Kopf opens the server, so a restarted replica never admits from a half-built state). ``start`` sets Kopf's
    webhook server up; the operator's one registration routes binding and profile events and admissions here.
    """

    def __init__(self, options: WebhookOptions, state: ClusterState, metrics: OperatorMetrics,
                 recorder: PodRecorder | None = None) -> None:
        self.options, self.state, self.metrics = options, state, metrics
        self.recorder = recorder  # ProfileRecordings (--recording): decided before the bindings
        self.apparmor_field = True
        self._writer: BindingStatusWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, api: KubeApi, settings: kopf.OperatorSettings) -> None:
        """Learn the API server's version, make the serving certificate current, start the status writer."""
        options = self.options
        version = options.server_version or str((await api.request("GET", "/version"))["gitVersion"])
        self.apparmor_field = has_apparmor_field(version)
        source: CertSource = (SelfManaged(api, options.namespace, options.secret_name, options.cert_dir,
                                          options.hosts())
                              if options.cert_source == "self" else FileSource(options.cert_dir))
        await _refresh(source, api, options.config_name)
        # Kopf re-reads these files and restarts its listener when they change (renewal).
        settings.admission.server = kopf.WebhookServer(
            addr=options.host, port=options.port, certfile=options.cert_dir / CERT_FILE,
            pkeyfile=options.cert_dir / KEY_FILE, file_check_interval=min(options.refresh_interval, 10.0))
        self._writer = BindingStatusWriter(self.state, api, options.status_interval)
        self._writer.mark({record.binding.key for records in self.state.bindings.values()
                           for record in records.values()})
        self._tasks = [asyncio.create_task(self._writer.run()), asyncio.create_task(_maintain(source, api, options))]
        log.info("webhook on %s:%d (API server %s: AppArmor as %s)", options.host, options.port, version,
                 "field" if self.apparmor_field else "annotation")

    async def stop(self) -> None:
        """Stop the status writer and the certificate upkeep."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def binding_event(self, event_type: str, obj: Object) -> None:
        """A ProfileBinding event: the state learns it, its status is recomputed (or forgotten)."""
        key = self.state.apply_binding(event_type, obj)
        if self._writer is not None:
            if event_type == "DELETED":
                self._writer.forget(key)
            else:
                self._writer.mark({key})

    def profile_changed(self, profile_key: str) -> None:
        """A profile changed (the state already knows): the problems of the bindings naming it may have too."""
        if self._writer is not None:
            self._writer.mark(self.state.bindings_of_profile(profile_key))

    def admit(self, pod: Object, patch: kopf.Patch, warnings: list[str], dryrun: bool) -> None:
        """Decide one pod CREATE: patch it, warn, or refuse it (``kopf.AdmissionError``)."""
        started = time.perf_counter()
        namespace = str((pod.get("metadata") or {}).get("namespace") or "")
        bindings = self.state.bindings_in(namespace)
        if self.recorder is not None:
            recorded = self.recorder.admit(pod)
            warnings.extend(recorded.warnings)
            if recorded.rejection:
                raise kopf.AdmissionError(recorded.rejection, code=403)
            if recorded.pod is not None:
                patch.fns.append(partial(_apply, recorded.patch))
                pod = recorded.pod
            if recorded.recording is not None:  # no binding may take a recorded container off its logging profile
                bindings = [dataclasses.replace(b, override_existing=False) for b in bindings]
        decision = binding.decide(pod, bindings, self.state.profile_infos(), self.apparmor_field)
        warnings.extend(decision.warnings)
        self.metrics.webhook_seconds.observe(time.perf_counter() - started)
        if decision.rejection:
            raise kopf.AdmissionError(decision.rejection, code=403)
        if decision.patch:
            patch.fns.append(partial(_apply, decision.patch))
        if decision.bound and not dryrun and self._writer is not None:
            self._writer.bound(decision.bound)


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
