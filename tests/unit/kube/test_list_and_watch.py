"""kubeapi.list_and_watch against a scripted API: resume after a lost connection, list again only on 410."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest

from secprofiles.kube.client import KubeApi, list_and_watch, reconnect_delay


def obj(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version}}


class ScriptedApi:
    """Answers listings and watches from scripts; records the calls. Ends the test when a script runs out."""

    def __init__(self, listings: list[dict[str, Any]], watches: list[list[Any]]) -> None:
        self.listings, self.watches = listings, watches
        self.calls: list[str] = []

    async def request(self, method: str, path: str) -> dict[str, Any]:
        self.calls.append("list")
        if not self.listings:
            raise asyncio.CancelledError
        return self.listings.pop(0)

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.calls.append(f"watch@{resource_version}")
        if not self.watches:
            raise asyncio.CancelledError
        for step in self.watches.pop(0):
            if isinstance(step, BaseException):
                raise step
            yield step


async def test_a_lost_connection_resumes_the_watch_and_only_410_lists_again() -> None:
    api = ScriptedApi(
        listings=[{"metadata": {"resourceVersion": "10"}, "items": [obj("a", "5")]},
                  {"metadata": {"resourceVersion": "20"}, "items": [obj("b", "19")]}],
        watches=[[("MODIFIED", obj("a", "11")), aiohttp.ClientPayloadError("cut")],  # connection lost
                 [("BOOKMARK", {"metadata": {"resourceVersion": "12"}})],  # ended by the server
                 [("ERROR", {"code": 410, "reason": "Expired", "message": "too old resource version"})]])
    events: list[tuple[str, str]] = []
    synced = 0

    async def on_event(kind: str, item: dict[str, Any]) -> None:
        events.append((kind, item["metadata"]["name"]))

    async def on_synced() -> None:
        nonlocal synced
        synced += 1

    with pytest.raises(asyncio.CancelledError):
        await list_and_watch(cast(KubeApi, api), "/x", on_event, on_synced, retry_delay=0)
    assert api.calls == ["list", "watch@10", "watch@11", "watch@12", "list", "watch@20"]
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a"), ("ADDED", "b")]
    assert synced == 2


@pytest.mark.parametrize(("failures", "expected"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (50, 4.0)])
def test_reconnect_delay_doubles_up_to_a_cap(failures: int, expected: float) -> None:
    assert reconnect_delay(failures) == expected
    assert reconnect_delay(failures, jitter=0.5) == expected / 2
