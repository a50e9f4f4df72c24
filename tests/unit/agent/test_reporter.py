"""Batched NodeProfileStatus writes and the readiness taint, against an in-memory API."""

from __future__ import annotations

from typing import Any

import pytest

from secprofiles.agent import taint
from secprofiles.agent.reporter import Reporter
from secprofiles.kube.client import ApiError
from secprofiles.model import nodereport
from secprofiles.model.nodereport import Entry
from tests.unit.agent.fakes import FakeApi

NPS = "/apis/secprofiles.io/v1alpha1/nodeprofilestatuses/node-a"
NODE = "/api/v1/nodes/node-a"
NOT_READY = {"key": nodereport.NOT_READY_TAINT, "effect": "NoSchedule"}


@pytest.fixture
def api() -> FakeApi:
    fake = FakeApi()
    fake.add_node("node-a")
    return fake


async def test_the_status_object_is_created_owned_by_the_node(api: FakeApi) -> None:
    reporter = Reporter(api, "node-a")
    await reporter.ensure_object()
    created = api.objects[NPS]
    assert created["spec"] == {"nodeName": "node-a"}
    assert created["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "uid-node-a"}]
    await Reporter(api, "node-a").ensure_object()  # a restart finds it
    assert [w[0] for w in api.writes] == ["POST"]


async def test_n_changes_make_one_merge_patch_to_the_status_subresource(api: FakeApi) -> None:
    reporter = Reporter(api, "node-a")
    await reporter.ensure_object()
    for i in range(500):
        reporter.set(f"seccomp/apps/p{i}", Entry(f"sha256:{i}", nodereport.INSTALLED))
    reporter.set("apparmor/demo", Entry("", nodereport.ERROR, nodereport.APPARMOR_NOT_ENABLED))
    reporter.set_facts(ready=False, appArmorEnabled=False)
    assert await reporter.flush() is True
    patches = api.status_patches()
    assert len(patches) == 1
    status = api.objects[NPS]["status"]
    assert len(status["profiles"]) == 501
    assert status["profiles"]["seccomp/apps/p7"] == {"contentHash": "sha256:7", "state": "Installed"}
    assert status["profiles"]["apparmor/demo"]["message"] == "AppArmor not enabled on node"
    assert status["summary"] == {"installed": 500, "failed": 1}
    assert status["ready"] is False
    assert await reporter.flush() is False  # nothing new: no write


async def test_later_values_win_and_changes_back_cancel_out(api: FakeApi) -> None:
    reporter = Reporter(api, "node-a")
    await reporter.ensure_object()
    reporter.set("seccomp/apps/a", Entry("sha256:1", nodereport.INSTALLED))
    await reporter.flush()
    reporter.set("seccomp/apps/a", Entry("sha256:2", nodereport.INSTALLED))
    reporter.set("seccomp/apps/a", Entry("sha256:1", nodereport.INSTALLED))  # back to what was sent
    reporter.set_facts(ready=False)  # sent before? no: a fact is sent once
    await reporter.flush()
    reporter.set_facts(ready=False)
    assert reporter.pending() == 0 and await reporter.flush() is False
    reporter.set("seccomp/apps/b", Entry("sha256:3", nodereport.INSTALLED))
    reporter.remove("seccomp/apps/a")
    await reporter.flush()
    last = api.status_patches()[-1]["status"]
    assert last["profiles"] == {"seccomp/apps/a": None, "seccomp/apps/b": {"contentHash": "sha256:3",
                                                                           "state": "Installed"}}
    assert api.objects[NPS]["status"]["profiles"] == {"seccomp/apps/b": {"contentHash": "sha256:3",
                                                                         "state": "Installed"}}
    assert len(api.status_patches()) == 3


async def test_a_restart_learns_what_the_status_already_has(api: FakeApi) -> None:
    first = Reporter(api, "node-a")
    await first.ensure_object()
    first.set("seccomp/apps/a", Entry("sha256:1", nodereport.INSTALLED))
    await first.flush()
    second = Reporter(api, "node-a")
    await second.ensure_object()
    assert second.reported_keys() == {"seccomp/apps/a"}
    second.set("seccomp/apps/a", Entry("sha256:1", nodereport.INSTALLED))
    assert second.pending() == 0


async def test_a_failed_flush_keeps_its_changes_for_the_next(api: FakeApi) -> None:
    reporter = Reporter(api, "node-a")
    await reporter.ensure_object()
    reporter.set("seccomp/apps/a", Entry("sha256:1", nodereport.INSTALLED))
    saved = api.objects.pop(NPS)
    with pytest.raises(ApiError):
        await reporter.flush()
    assert reporter.pending() == 1
    api.objects[NPS] = saved
    reporter.set("seccomp/apps/b", Entry("sha256:2", nodereport.INSTALLED))
    await reporter.flush()
    assert set(api.objects[NPS]["status"]["profiles"]) == {"seccomp/apps/a", "seccomp/apps/b"}


async def test_recreate_resends_everything(api: FakeApi) -> None:
    reporter = Reporter(api, "node-a")
    await reporter.ensure_object()
    reporter.set("seccomp/apps/a", Entry("sha256:1", nodereport.INSTALLED))
    reporter.set_facts(ready=True)
    await reporter.flush()
    del api.objects[NPS]
    await reporter.recreate()
    await reporter.flush()
    assert api.objects[NPS]["status"]["profiles"] == {"seccomp/apps/a": {"contentHash": "sha256:1",
                                                                         "state": "Installed"}}
    assert api.objects[NPS]["status"]["ready"] is True


def test_untaint_patch_tests_the_array_it_read() -> None:
    other = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    assert taint.untaint_patch([other]) is None
    assert taint.untaint_patch([other, NOT_READY]) == [
        {"op": "test", "path": "/spec/taints", "value": [other, NOT_READY]},
        {"op": "replace", "path": "/spec/taints", "value": [other]}]


async def test_taint_removal_keeps_other_taints_and_retries_on_a_concurrent_change(api: FakeApi) -> None:
    other = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    api.objects[NODE]["spec"]["taints"] = [NOT_READY]
    original_get = api.get
    calls = 0

    async def racing_get(path: str) -> dict[str, Any] | None:
        nonlocal calls
        found = await original_get(path)
        calls += 1
        if calls == 1:  # someone adds a taint right after our first read
            api.objects[NODE]["spec"]["taints"] = [NOT_READY, other]
        return found

    api.get = racing_get  # type: ignore[method-assign]
    assert await taint.remove_not_ready_taint(api, "node-a") is True
    assert api.objects[NODE]["spec"]["taints"] == [other]  # the concurrent addition survived
    assert calls == 2
    assert await taint.remove_not_ready_taint(api, "node-a") is False
