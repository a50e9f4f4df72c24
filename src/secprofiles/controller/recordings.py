"""The operator's ProfileRecording support (``--recording``): watches, the webhook's recording decision, the writer.

Every replica keeps ``RecordingState`` warm from watch events (ProfileRecordings, RecordingReports, Nodes, Pods of
namespaces that have recordings, and the recordings' logging profiles) and answers the webhook from it
(``admit``). Only the Lease holder writes (``lead``): for each recording marked dirty it carries out
``recording_state.plan``: the logging profile and the node reports' specs while it runs, ``spec.stop`` on the
reports once it ended, then the profiles, the deletion of the logging profile and the final status, holding the
recording's finalizer until then so that deleting a recording still writes its profiles.

Invariants:
- Writes are idempotent and guarded: a profile it writes is created, or replaced only if it carries
  ``secprofiles.io/recorded-from: <this recording>``; a SeccompProfile of that name that is someone else's makes the
  recording ``Error`` (ProfileConflict) and nothing is written. Status is patched only when it changed.
- Its own timers (a recording's ``durationSeconds``, the wait for final reports) only mark the recording dirty;
  the writer retries failed API calls with a short backoff, like the profile reconciler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from secprofiles.controller.admission import recording as recording_admission
from secprofiles.controller.admission.recording import RecordingDecision
from secprofiles.controller.leadership import Leadership
from secprofiles.controller.recording_state import FINALIZER, Finish, RecordingState, Running, Stopping, plan
from secprofiles.controller.state import ClusterState
from secprofiles.kube import clock
from secprofiles.kube.client import ApiError, Credentials, KubeApi
from secprofiles.model import keys, schema
from secprofiles.model.recording import LOG_SUFFIX
from secprofiles.objects import Object
from secprofiles.recording.report import new_report, pod_list, report_name
from secprofiles.recording.synthesis import RECORDED_FROM
from secprofiles.resources import resource_path

log = logging.getLogger(__name__)
_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)


class ConflictError(RuntimeError):
    """A SeccompProfile the recording would write belongs to someone else."""


class Recordings:
    """ProfileRecordings in one operator: warm state on every replica, a writer on the leader."""

    def __init__(self, kubeconfig: str | None, cluster: ClusterState, leadership: Leadership) -> None:
        self.kubeconfig = kubeconfig
        self.cluster = cluster  # the logging profiles' published status
        self.leadership = leadership
        self.state = RecordingState()
        self.api: KubeApi | None = None
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._ended_at: dict[str, float] = {}  # key -> monotonic time the writer first saw it ended
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._listed_namespaces: set[str] = set()

    # -- the webhook ---------------------------------------------------------------------------------------
    def admit(self, pod: Object) -> RecordingDecision:
        """The recording decision for one new pod (``admission.recording.decide`` over the warm state)."""
        namespace = str((pod.get("metadata") or {}).get("namespace") or "")
        return recording_admission.decide(pod, self.state.running_in(namespace, clock.now()),
                                          self.cluster.profile_infos())

    # -- events --------------------------------------------------------------------------------------------
    def mark(self, keys_: set[str]) -> None:
        """Queue recordings for the writer (each at most once while pending)."""
        for key in keys_ - self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    async def recording_event(self, event: str, obj: Object) -> None:
        """A ProfileRecording event; the first recording of a namespace makes its pods matter (listed once)."""
        self.mark(self.state.apply_recording(event, obj))
        namespace = (obj.get("metadata") or {}).get("namespace", "")
        if event != "DELETED" and namespace not in self._listed_namespaces and self.api is not None:
            self._listed_namespaces.add(namespace)
            await self._list_pods(namespace)

    async def _list_pods(self, namespace: str) -> None:
        assert self.api is not None
        try:
            pods = (await self.api.request("GET", resource_path("Pod", namespace))).get("items") or []
        except (ApiError, OSError) as error:
            self._listed_namespaces.discard(namespace)  # listed again at its next recording event
            log.warning("pods of namespace %s not listed (%s): selector matches may be missed", namespace, error)
            return
        for pod in pods:
            self.mark(self.state.apply_pod("ADDED", pod))

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """Add this part's handlers to the operator's registry."""

        @kopf.on.startup(registry=registry)
        async def start_recordings(**_: Any) -> None:
            await self.start()

        @kopf.on.cleanup(registry=registry)
        async def stop_recordings(**_: Any) -> None:
            if self.api is not None:
                await self.api.close()

        @kopf.on.event(schema.GROUP, schema.VERSION, schema.plural(schema.PROFILE_RECORDING), registry=registry)
        async def recording_event(event: kopf.RawEvent, **_: Any) -> None:
            await self.recording_event(_type(event), dict(event["object"]))

        @kopf.on.event(schema.GROUP, schema.VERSION, schema.plural(schema.RECORDING_REPORT), registry=registry)
        async def recording_report_event(event: kopf.RawEvent, **_: Any) -> None:
            self.mark(self.state.apply_report(_type(event), dict(event["object"])))

        @kopf.on.event("", "v1", "pods", registry=registry)
        async def recording_pod_event(event: kopf.RawEvent, **_: Any) -> None:
            obj = event["object"]
            if (obj.get("metadata") or {}).get("namespace") in self.state.namespaces():
                self.mark(self.state.apply_pod(_type(event), dict(obj)))

        @kopf.on.event("", "v1", "nodes", registry=registry)
        async def recording_node_event(event: kopf.RawEvent, **_: Any) -> None:
            self.mark(self.state.apply_node(_type(event), dict(event["object"])))

        @kopf.on.event(schema.GROUP, schema.VERSION, schema.plural(schema.SECCOMP_PROFILE), registry=registry)
        async def recording_profile_event(event: kopf.RawEvent, **_: Any) -> None:
            meta = event["object"].get("metadata") or {}
            if str(meta.get("name", "")).endswith(LOG_SUFFIX):
                key = f"{meta.get('namespace')}/{str(meta['name']).removesuffix(LOG_SUFFIX)}"
                # the logging profile's phase (ClusterState knows it) decides the recording's status
                self.mark(self.state.apply_log_profile(_type(event), dict(event["object"])) |
                          ({key} if key in self.state.entries else set()))

    async def start(self) -> None:
        """Connect and list what the webhook's decisions depend on before Kopf opens the webhook server (Kopf
        runs this again after a failure: nothing counts as started until the listing is complete)."""
        if self.api is not None:
            return
        api = KubeApi(Credentials.auto(self.kubeconfig), user_agent="secprofiles-operator/recordings")
        try:
            for kind, apply in ((schema.PROFILE_RECORDING, self.state.apply_recording),
                                ("Node", self.state.apply_node), (schema.RECORDING_REPORT, self.state.apply_report)):
                for item in (await api.request("GET", resource_path(kind))).get("items") or []:
                    apply("ADDED", item)
            for namespace in sorted(self.state.namespaces()):
                path = resource_path(schema.SECCOMP_PROFILE, namespace)
                for profile in (await api.request("GET", path)).get("items") or []:
                    self.state.apply_log_profile("ADDED", profile)
        except BaseException:
            await api.close()
            raise
        self.api = api
        for namespace in sorted(self.state.namespaces()):
            self._listed_namespaces.add(namespace)
            await self._list_pods(namespace)
        self.leadership.while_leading(self.lead)

    # -- the writer (leader only) --------------------------------------------------------------------------
    async def lead(self) -> None:
        """Work on every recording, then on what changes (started each time this replica becomes the leader)."""
        self.mark(set(self.state.entries))
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            try:
                await self.reconcile(key)
                self._failures.pop(key, None)
            except Exception as error:  # one failing recording must never stop the only writer
                attempt = self._failures.get(key, 0)
                self._failures[key] = attempt + 1
                delay = _RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)]
                expected = isinstance(error, (TimeoutError, ApiError, OSError))
                log.warning("recording %s: %s; retrying in %.1fs", key, str(error) or type(error).__name__, delay,
                            exc_info=None if expected else error)
                asyncio.get_running_loop().call_later(delay, self.mark, {key})

    async def reconcile(self, key: str) -> None:
        """Carry out the plan of one recording."""
        entry = self.state.entries.get(key)
        if entry is None:
            self._ended_at.pop(key, None)
            if (timer := self._timers.pop(key, None)) is not None:
                timer.cancel()
            return
        recording, meta = entry.recording, entry.obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if entry.finished:
            if FINALIZER in finalizers:
                await self._set_finalizers(entry.obj, [f for f in finalizers if f != FINALIZER])
            return
        if FINALIZER not in finalizers and not recording.deleting and not entry.findings:
            await self._set_finalizers(entry.obj, [*finalizers, FINALIZER])
        now = clock.now()
        ended = recording.ended(now) is not None or bool(entry.findings)
        started = self._ended_at.setdefault(key, time.monotonic()) if ended else None
        waited = time.monotonic() - started if started is not None else 0.0
        log_key = keys.seccomp_key(recording.namespace, recording.logging_profile)
        step = plan(entry, now, self.cluster.profile_infos().get(log_key), self.state.architectures(), waited,
                    self.state.nodes)
        if isinstance(step, Running):
            await self._ensure_log_profile(entry.obj, step.log_profile, entry.log_profile_ours)
            for node, pods in step.reports.items():
                await self._ensure_report(entry.obj, node, pods)
            await self._publish(entry.obj, step.status)
            if (deadline := recording.deadline) is not None:
                self._wake_in(key, (deadline - now).total_seconds() + 0.05)
            return
        unstopped = [node for node, view in entry.reports.items() if not view.stop]
        if isinstance(step, Stopping):
            await self._stop_reports(entry.obj, unstopped)
            await self._publish(entry.obj, step.status)
            self._wake_in(key, step.wait)
        else:
            await self._finish(entry.obj, step, entry.log_profile_ours, unstopped)

    def _wake_in(self, key: str, delay: float) -> None:
        """Mark ``key`` again after ``delay`` seconds (one timer per recording)."""
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(max(0.0, delay), self.mark, {key})

    async def _finish(self, recording: Object, step: Finish, log_profile_ours: bool | None,
                      unstopped: list[str]) -> None:
        assert self.api is not None
        meta = recording["metadata"]
        status = step.status
        try:
            for profile in step.profiles:
                await self._check_writable(profile, meta["name"])
        except ConflictError as error:
            status = {**status, "phase": "Error", "reason": "ProfileConflict", "message": f"{error}; nothing written",
                      "profiles": None}
        else:
            for profile in step.profiles:
                await self._write_profile(profile)
        await self._stop_reports(recording, unstopped)  # so every recorder forgets the pods
        if log_profile_ours:
            await self.api.delete(resource_path(schema.SECCOMP_PROFILE, meta["namespace"], meta["name"] + LOG_SUFFIX))
        await self._publish(recording, status)
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER in finalizers:
            await self._set_finalizers(recording, [f for f in finalizers if f != FINALIZER])
        log.info("recording %s/%s finished: %s (%s)", meta["namespace"], meta["name"], status["phase"],
                 status.get("message"))

    async def _check_writable(self, profile: Object, recording: str) -> None:
        assert self.api is not None
        meta = profile["metadata"]
        existing = await self.api.get(resource_path(schema.SECCOMP_PROFILE, meta["namespace"], meta["name"]))
        if existing is not None and (existing["metadata"].get("annotations") or {}).get(RECORDED_FROM) != recording:
            raise ConflictError(f"SeccompProfile {meta['namespace']}/{meta['name']} exists and was not recorded by "
                                f"ProfileRecording {recording}")

    async def _write_profile(self, profile: Object) -> None:
        """Create it, or replace the spec and annotations of the one this recording wrote before (a retry)."""
        assert self.api is not None
        meta = profile["metadata"]
        try:
            await self.api.create(resource_path(schema.SECCOMP_PROFILE, meta["namespace"]), profile)
        except ApiError as error:
            if error.status != 409:
                raise
            await self.api.patch(resource_path(schema.SECCOMP_PROFILE, meta["namespace"], meta["name"]),
                                 {"metadata": {"annotations": meta.get("annotations")}, "spec": profile["spec"]})

    async def _ensure_log_profile(self, recording: Object, profile: Object, ours: bool | None) -> None:
        assert self.api is not None
        if ours is not None:
            return  # it exists: ours (done) or someone else's (the status says so)
        meta = recording["metadata"]
        profile = {**profile, "metadata": {**profile["metadata"], "ownerReferences": [{
            "apiVersion": schema.API_VERSION, "kind": schema.PROFILE_RECORDING, "name": meta["name"],
            "uid": meta["uid"]}]}}
        try:
            created = await self.api.create(resource_path(schema.SECCOMP_PROFILE, meta["namespace"]), profile)
        except ApiError as error:
            if error.status != 409:
                raise
            created = await self.api.get(resource_path(schema.SECCOMP_PROFILE, meta["namespace"],
                                                        profile["metadata"]["name"])) or {}
        self.mark(self.state.apply_log_profile("ADDED", created))

    async def _ensure_report(self, recording: Object, node: str, pods: Mapping[str, str]) -> None:
        assert self.api is not None
        meta = recording["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        view = self.state.entries[key].reports.get(node)
        if view is not None and dict(view.pods) == dict(pods):
            return
        path = resource_path(schema.RECORDING_REPORT, meta["namespace"], report_name(meta["name"], node))
        if view is None:
            try:
                created = await self.api.create(resource_path(schema.RECORDING_REPORT, meta["namespace"]),
                                                new_report(recording, node, pods))
                self.state.apply_report("ADDED", created)
                return
            except ApiError as error:
                if error.status != 409:
                    raise
        updated = await self.api.patch(path, {"spec": {"pods": pod_list(pods)}})
        self.state.apply_report("MODIFIED", updated)

    async def _stop_reports(self, recording: Object, nodes: list[str]) -> None:
        assert self.api is not None
        meta = recording["metadata"]
        for node in nodes:
            path = resource_path(schema.RECORDING_REPORT, meta["namespace"], report_name(meta["name"], node))
            try:
                self.state.apply_report("MODIFIED", await self.api.patch(path, {"spec": {"stop": True}}))
            except ApiError as error:
                if error.status != 404:
                    raise

    async def _publish(self, recording: Object, status: Object) -> None:
        assert self.api is not None
        old = recording.get("status") or {}
        if all(old.get(k) == v for k, v in status.items()):
            return
        meta = recording["metadata"]
        try:
            await self.api.patch(resource_path(schema.PROFILE_RECORDING, meta["namespace"], meta["name"], "status"),
                                 {"status": status})
        except ApiError as error:
            if error.status != 404:
                raise

    async def _set_finalizers(self, recording: Object, finalizers: list[str]) -> None:
        assert self.api is not None
        meta = recording["metadata"]
        # resourceVersion makes it conditional: a concurrent change gives 409, and its event marks it again
        body = {"metadata": {"resourceVersion": meta.get("resourceVersion"), "finalizers": finalizers or None}}
        try:
            await self.api.patch(resource_path(schema.PROFILE_RECORDING, meta["namespace"], meta["name"]), body)
        except ApiError as error:
            if error.status not in (404, 409):
                raise


def _type(event: kopf.RawEvent) -> str:
    # Kopf reports objects of the initial listing with type None.
    return event.get("type") or "ADDED"

