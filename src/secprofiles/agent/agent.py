"""The convergence loop of one node.

Two reflectors (``kubeapi.list_and_watch``) keep ``DesiredState`` current for SeccompProfiles and
AppArmorProfiles, cluster-wide, and mark status keys dirty. Once both have listed, a full resync runs
before anything else: stale files and temp files are removed, every profile is checked, written if its
bytes differ, and every AppArmor profile is loaded again (kernel state does not survive a reboot). Then
the readiness taint goes, ``status.ready`` turns true, and the loop only wakes for dirty keys: no polling,
no requeue timers except backoff after I/O errors. The status is flushed whenever the queue is drained.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from secprofiles.agent import VERSION, endpoints, taint
from secprofiles.agent.apparmor_loader import Loader, LoadError, SourceStore, apparmor_enabled
from secprofiles.agent.desired import DesiredState, validated_hash
from secprofiles.agent.files import SeccompTree, UnsafePathError
from secprofiles.agent.reporter import Reporter
from secprofiles.kube import clock
from secprofiles.kube.client import ApiError, EventHandler, KubeApi, list_and_watch
from secprofiles.model import keys, nodereport, schema, seccomp
from secprofiles.model.evaluate import Rendered, evaluate
from secprofiles.model.nodereport import Failure
from secprofiles.objects import Object
from secprofiles.resources import resource_path

log = logging.getLogger(__name__)
KINDS = (schema.SECCOMP_PROFILE, schema.APPARMOR_PROFILE)
MAX_BACKOFF = 60.0  # disk or AppArmor errors of one profile
MAX_API_BACKOFF = 5.0  # status patches and the readiness taint


@dataclass(frozen=True)
class Config:
    """Where this agent's node lives on disk and what it is called."""

    node_name: str
    host_root: Path
    kubelet_root: str
    state_dir: Path


def seccomp_available() -> bool:
    """The kernel supports seccomp: /proc/self/status has a ``Seccomp:`` line (the node shares the kernel)."""
    try:
        return any(line.startswith("Seccomp:") for line in Path("/proc/self/status").read_text().splitlines())
    except OSError:
        return False


class Agent:
    """One node's agent. ``run`` does everything; the other methods are its steps (and test seams)."""

    def __init__(self, api: KubeApi, config: Config, loader: Loader | None) -> None:
        self.api = api
        self.config = config
        self.tree = SeccompTree(config.host_root, config.kubelet_root)
        self.sources = SourceStore(config.state_dir)
        self.apparmor_enabled = apparmor_enabled(config.host_root)
        self.loader = loader if self.apparmor_enabled else None
        self.desired = DesiredState()
        self.reporter = Reporter(api, config.node_name)
        self.ready = False
        self.full_sync_done = False
        self._installed: dict[str, str] = {}  # key -> content hash of what is on the node
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._listed: set[str] = set()
        self._all_listed = asyncio.Event()
        self._io_failures: dict[str, int] = {}  # key -> consecutive failed attempts (drives backoff)
        self._flush_failures = 0

    async def run(self) -> None:
        """Run until cancelled; an unexpected error in any part ends the agent (its DaemonSet restarts it)."""
        await self.prepare()
        tasks = [asyncio.create_task(list_and_watch(self.api, resource_path(kind), self._on_event(kind),
                                                    self._on_listed(kind)), name=f"watch-{kind}")
                 for kind in KINDS]
        tasks.append(asyncio.create_task(self._converge(), name="converge"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise what ended it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def prepare(self) -> None:
        """Create the NodeProfileStatus if needed and report the node facts, not ready until synced."""
        await self.reporter.ensure_object()
        self.reporter.set_facts(ready=False, seccompAvailable=seccomp_available(),
                                appArmorEnabled=self.apparmor_enabled, agentVersion=VERSION)
        await self._flush()

    def _on_event(self, kind: str) -> EventHandler:
        async def on_event(event: str, obj: Object) -> None:
            obj.setdefault("kind", kind)  # list items may omit it
            endpoints.EVENTS.labels(kind).inc()
            self.mark_dirty(self.desired.apply(event, obj))
        return on_event

    def _on_listed(self, kind: str) -> Callable[[], Awaitable[None]]:
        async def on_listed() -> None:
            self._listed.add(kind)
            if len(self._listed) == len(KINDS):
                self._all_listed.set()
            if self.full_sync_done:
                # A listing after the first: the API server is back (e.g. restarted). What waits on a backoff to
                # be sent (status entries, the readiness taint) goes now, not when the backoff ends.
                self._wake.set()
        return on_listed

    def mark_dirty(self, keys: set[str]) -> None:
        """Queue keys for reconciling and wake the loop."""
        if keys:
            self._dirty |= keys
            self._wake.set()

    async def _converge(self) -> None:
        await self._all_listed.wait()
        await self.full_sync()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.drain()

    async def full_sync(self) -> None:
        """Converge everything from scratch: the first thing after both kinds are listed."""
        started = time.monotonic()
        wanted = {keys.parse_key(k)[1:] for k in self.desired if k.startswith("seccomp/")}
        existing = await asyncio.to_thread(self.tree.existing)
        removed = await asyncio.to_thread(self.tree.cleanup, wanted)
        if removed:
            log.info("removed stale files", extra={"paths": removed[:50], "count": len(removed)})
        self._installed = {keys.seccomp_key(ns, name): seccomp.content_hash(content)
                           for (ns, name), content in existing.items() if (ns, name) in wanted}
        for name in self.sources.names():
            key = keys.apparmor_key(name)
            if self.desired.get(key) is None:
                await self._reconcile(key)  # loaded by an earlier run, profile gone since: unload
        for key in self.reporter.known_keys() - self.desired.keys():
            self.reporter.forget(key)
        self._dirty |= self.desired.keys()
        await self.drain()
        self.full_sync_done = True
        endpoints.FULL_SYNC_SECONDS.set(time.monotonic() - started)
        self.reporter.set_facts(lastFullSync=clock.timestamp())
        log.info("full sync done", extra={"profiles": len(self.desired),
                                          "seconds": round(time.monotonic() - started, 3)})
        await self._become_ready()  # sends lastFullSync with ready=true in one patch
        await self._flush()  # (or alone, when readiness has to wait)

    async def drain(self) -> None:
        """Reconcile every dirty key, then send the status in one patch (more only for huge bursts)."""
        while self._dirty:
            await self._reconcile(self._dirty.pop())
            await asyncio.sleep(0)  # let watch events and health probes in between profiles
        await self._flush()
        await self._become_ready()
        self._update_gauges()

    async def _become_ready(self) -> None:
        if self.ready or not self.full_sync_done or self._io_failures:
            return
        try:
            await taint.remove_not_ready_taint(self.api, self.config.node_name)
        except (ApiError, RuntimeError, OSError) as error:
            log.warning("could not remove the readiness taint; retrying", extra={"error": str(error)})
            self._retry_later(None, self._flush_failures + 1)
            return
        self.ready = True
        endpoints.READY.set(1)
        self.reporter.set_facts(ready=True)
        await self._flush()

    async def _flush(self) -> None:
        try:
            if await self.reporter.flush():
                endpoints.STATUS_PATCHES.inc()
            self._flush_failures = 0
        except ApiError as error:
            self._flush_failures += 1
            if error.status == 404:
                log.warning("NodeProfileStatus vanished; creating it again")
                await self.reporter.recreate()
                self._wake.set()
            else:
                log.warning("status patch failed; retrying", extra={"error": str(error)})
                self._retry_later(None, self._flush_failures)
        except OSError as error:  # aiohttp's connection errors are OSErrors too
            self._flush_failures += 1
            log.warning("status patch failed; retrying", extra={"error": str(error)})
            self._retry_later(None, self._flush_failures)

    def _retry_later(self, key: str | None, attempt: int) -> None:
        """Backoff after an error (the only timer the agent has): mark ``key`` dirty, or just wake the loop.

        API writes (``key`` None) back off to at most ``MAX_API_BACKOFF``, like a kubelet's status updates:
        after an outage the status must catch up within seconds even when nothing else happens.
        """
        delay = min(MAX_BACKOFF if key is not None else MAX_API_BACKOFF, 0.25 * 2 ** min(attempt, 10))
        loop = asyncio.get_running_loop()
        if key is None:
            loop.call_later(delay, self._wake.set)
        else:
            loop.call_later(delay, self.mark_dirty, {key})

    async def _reconcile(self, key: str) -> None:
        kind, namespace, name = keys.parse_key(key)
        started = time.monotonic()
        obj = self.desired.get(key)
        content_hash: str | None = None
        try:
            if obj is None:
                await self._remove(kind, key, namespace, name)
                self.reporter.forget(key)
            else:
                outcome = await evaluate(obj, self.desired.lookup, validated_hash=validated_hash(obj))
                if outcome.rendered is None:
                    # Never written; a file from an earlier valid version stays (pods using it keep starting).
                    self.reporter.invalid(key, "; ".join(str(f) for f in outcome.findings))
                    endpoints.RECONCILES.labels(kind, nodereport.ERROR).inc()
                else:
                    content_hash = outcome.rendered.content_hash
                    failure = await self._install(key, namespace, name, outcome.rendered)
                    self.reporter.processed(key, content_hash, failure)
                    endpoints.RECONCILES.labels(kind, nodereport.ERROR if failure else nodereport.INSTALLED).inc()
            self._io_failures.pop(key, None)
        except (OSError, LoadError) as error:
            attempt = self._io_failures.get(key, 0) + 1
            self._io_failures[key] = attempt
            log.warning("reconcile failed; retrying", extra={"key": key, "error": str(error), "attempt": attempt})
            if content_hash is not None:
                self.reporter.processed(key, content_hash, Failure(content_hash, str(error)))
            self._retry_later(key, attempt)
        endpoints.RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - started)

    async def _install(self, key: str, namespace: str, name: str, rendered: Rendered) -> Failure | None:
        """Put a valid rendering on the node; a failure that retrying cannot fix is returned, I/O errors raise."""
        if isinstance(rendered, seccomp.Rendered):
            if self._installed.get(key) != rendered.content_hash:
                try:
                    await asyncio.to_thread(self.tree.write, namespace, name, rendered.content)
                except UnsafePathError as error:
                    return Failure(rendered.content_hash, str(error))
                self._installed[key] = rendered.content_hash
                log.info("wrote seccomp profile", extra={"key": key, "contentHash": rendered.content_hash})
            return None
        if self.loader is None:
            # Reported, never skipped: pods asking for this profile cannot run here.
            return Failure(rendered.content_hash, nodereport.APPARMOR_NOT_ENABLED)
        previous = self.sources.read(name)
        loaded = self.loader.loaded_names()
        if name in loaded and previous is None:
            return Failure(rendered.content_hash, f"an AppArmor profile named {name!r} is already loaded on the node "
                                                  "and was not loaded by secprofiles; refusing to replace it")
        if self._installed.get(key) == rendered.content_hash and name in loaded:
            return None
        # The text is kept before loading: a crash right after the load still leaves the agent owning it.
        path = self.sources.write(name, rendered.content)
        try:
            await self.loader.load(name, path, rendered.complain)
        except LoadError as error:
            if previous is None:
                self.sources.delete(name)
            else:
                self.sources.write(name, previous)  # what is loaded is still the previous text: keep it for -R
            return Failure(rendered.content_hash, str(error))
        self._installed[key] = rendered.content_hash
        log.info("loaded AppArmor profile", extra={"key": key, "contentHash": rendered.content_hash,
                                                   "complain": rendered.complain})
        return None

    async def _remove(self, kind: str, key: str, namespace: str, name: str) -> None:
        """The profile is gone: its file removed, or its AppArmor profile unloaded (only what this agent loaded)."""
        self._installed.pop(key, None)
        if kind == keys.SECCOMP:
            try:
                if await asyncio.to_thread(self.tree.remove, namespace, name):
                    log.info("removed seccomp profile", extra={"key": key})
            except UnsafePathError as error:
                log.warning("not removing an unsafe path", extra={"key": key, "error": str(error)})
            return
        if self.sources.read(name) is not None:
            if self.loader is not None and name in self.loader.loaded_names():
                await self.loader.remove(name, self.sources.path(name))
                log.info("unloaded AppArmor profile", extra={"key": key})
            self.sources.delete(name)

    def _update_gauges(self) -> None:
        for kind, counts in self.reporter.counts_by_kind().items():
            for state, count in counts.items():
                endpoints.PROFILES.labels(kind, state).set(count)
