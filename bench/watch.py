"""A watch that timestamps, per profile, when its ADDED event arrived and when it became Installed.

One ``list_and_watch`` stream (the product's reflector code) per collection; the callback runs in the
benchmark's event loop and stamps ``time.perf_counter()``. The ADDED stamp is the reference the issue asks
for: what a bare client sees of the same create, on the same connection, in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from secprofiles.kube.client import KubeApi, list_and_watch

INSTALLED = "Installed"


def _key(obj: dict[str, object]) -> str:
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    return f"{meta.get('namespace') or ''}/{meta['name']}"


def installed(obj: dict[str, object]) -> bool:
    """Phase Installed for the object's current generation."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    assert isinstance(meta, dict) and isinstance(status, dict)
    return status.get("phase") == INSTALLED and status.get("observedGeneration") == meta.get("generation", 1)


class Tracker:
    """Timestamps of ADDED and Installed per object key (``namespace/name``), and the set now Installed."""

    def __init__(self, api: KubeApi, path: str) -> None:
        self.api, self.path = api, path
        self.added_at: dict[str, float] = {}
        self.installed_at: dict[str, float] = {}
        self.installed_now: set[str] = set()
        self.installed_generation: dict[str, int] = {}  # the generation each key was last Installed at
        self.events = 0
        self._changed = asyncio.Event()
        self._listed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start watching; returns once the initial listing is done."""
        self._task = asyncio.create_task(list_and_watch(self.api, self.path, self._on_event, self._on_listed))
        await asyncio.wait_for(self._listed.wait(), 60)

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _on_listed(self) -> None:
        self._listed.set()

    async def _on_event(self, kind: str, obj: dict[str, object]) -> None:
        stamp = time.perf_counter()
        key = _key(obj)
        self.events += 1
        if kind == "DELETED":
            self.installed_now.discard(key)
        else:
            self.added_at.setdefault(key, stamp)
            if installed(obj):
                self.installed_now.add(key)
                self.installed_at.setdefault(key, stamp)
                meta = obj["metadata"]
                assert isinstance(meta, dict)
                self.installed_generation[key] = int(meta.get("generation", 1))
            else:
                self.installed_now.discard(key)
                self.installed_at.pop(key, None)  # a new version: its install time is still to come
        self._changed.set()

    def forget(self, key: str) -> None:
        """Drop what is known about ``key`` (before it is created again, or changed)."""
        self.added_at.pop(key, None)
        self.installed_at.pop(key, None)
        self.installed_now.discard(key)

    async def until(self, condition: Callable[[], bool], within: float, what: str) -> None:
        """Wait until ``condition()`` holds, re-checked after every event; TimeoutError after ``within`` s."""
        deadline = time.monotonic() + within
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {within:.0f}s waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))
