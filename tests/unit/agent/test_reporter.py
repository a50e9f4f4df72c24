"""Batched NodeProfileStatus writes and the readiness taint, against an in-memory API."""

from __future__ import annotations

from typing import Any

import pytest

from secprofiles.agent import taint
from secprofiles.agent.reporter import Reporter
from secprofiles.kube.client import ApiError
from secprofiles.model import nodereport
from secprofiles.model.nodereport import Failure
from tests.reports import expected_buckets
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
    processed = {f"seccomp/apps/p{i}": f"sha256:{i}" for i in range(500)}
    for key, content_hash in processed.items():
        reporter.processed(key, content_hash)
    reporter.processed("apparmor/demo", "sha256:aa", Failure("sha256:aa", nodereport.APPARMOR_NOT_ENABLED))
    reporter.processed("seccomp/apps/broken", "sha256:bb", Failure("sha256:bb", "disk full"))
    reporter.invalid("seccomp/apps/bad", "spec.syscalls[0].names[0]: unknown syscall")
    reporter.set_facts(ready=False, appArmorEnabled=False)
    assert await reporter.flush() is True
    assert len(api.status_patches()) == 1
    status = api.objects[NPS]["status"]
    processed.update({"apparmor/demo": "sha256:aa", "seccomp/apps/broken": "sha256:bb"})
    assert status["buckets"] == expected_buckets(processed)  # the invalid one is not processed
    assert len(status["buckets"]) <= nodereport.BUCKETS
    # Implied failures (no AppArmor: appArmorEnabled says it) are not listed; the others are.
    assert status["failures"] == {
        "seccomp/apps/broken": {"contentHash": "sha256:bb", "message": "disk full"},
        "seccomp/apps/bad": {"contentHash": "", "message": "spec.syscalls[0].names[0]: unknown syscall"}}
    assert status["summary"] == {"installed": 500, "failed": 3}
    assert status["ready"] is False
    assert await reporter.flush() is False  # nothing new: no write


async def test_a_change_sends_one_bucket_and_changes_back_cancel_out(api: FakeApi) -> None:
    reporter = Reporter(api, "node-a")
    await reporter.ensure_object()
    for i in range(100):
        reporter.processed(f"seccomp/apps/p{i}", "sha256:1")
    await reporter.flush()
    reporter.processed("seccomp/apps/p7", "sha256:2")
    reporter.processed("seccomp/apps/p7", "sha256:1")  # back to what was sent
    reporter.set_facts(ready=False)
    await reporter.flush()
    assert "buckets" not in api.status_patches()[-1]["status"]  # only the fact went
    reporter.set_facts(ready=False)
    assert not reporter.pending() and await reporter.flush() is False
    reporter.processed("seccomp/apps/p7", "sha256:2")
    await reporter.flush()
    sent = api.status_patches()[-1]["status"]["buckets"]
    assert list(sent) == [nodereport.bucket_of("seccomp/apps/p7")]  # one bucket, whatever the profile count
    expected = {f"seccomp/apps/p{i}": "sha256:1" for i in range(100)} | {"seccomp/apps/p7": "sha256:2"}
    assert api.objects[NPS]["status"]["buckets"] == expected_buckets(expected)


async def test_forgetting_the_last_key_of_a_bucket_removes_the_bucket(api: FakeApi) -> None:
    reporter = Reporter(api, "node-a")
    await reporter.ensure_object()
    reporter.processed("seccomp/apps/a", "sha256:1")
    reporter.processed("seccomp/apps/b", "sha256:1", Failure("sha256:1", "disk full"))
    await reporter.flush()
    reporter.forget("seccomp/apps/a")
    reporter.forget("seccomp/apps/b")
    await reporter.flush()
    assert api.status_patches()[-1]["status"]["failures"] == {"seccomp/apps/b": None}
    assert api.objects[NPS]["status"]["buckets"] == {}
    assert api.objects[NPS]["status"]["failures"] == {}


async def test_a_restart_reconciles_with_what_the_status_already_has(api: FakeApi) -> None:
    first = Reporter(api, "node-a")
    await first.ensure_object()
    first.processed("seccomp/apps/a", "sha256:1")
    first.processed("seccomp/apps/gone", "sha256:1", Failure("sha256:1", "disk full"))
    await first.flush()
    second = Reporter(api, "node-a")
    await second.ensure_object()
    assert second.known_keys() == {"seccomp/apps/gone"}  # failures are named; processed keys are in digests
    second.processed("seccomp/apps/a", "sha256:1")
    second.forget("seccomp/apps/gone")
    await second.flush()
    assert api.objects[NPS]["status"]["buckets"] == expected_buckets({"seccomp/apps/a": "sha256:1"})
    assert api.objects[NPS]["status"]["failures"] == {}


async def test_a_failed_flush_keeps_its_changes_for_the_next(api: FakeApi) -> None:
    reporter = Reporter(api, "node-a")
    await reporter.ensure_object()
    reporter.processed("seccomp/apps/a", "sha256:1")
    saved = api.objects.pop(NPS)
    with pytest.raises(ApiError):
        await reporter.flush()
    assert reporter.pending()
    api.objects[NPS] = saved
    reporter.processed("seccomp/apps/b", "sha256:2")
    await reporter.flush()
    assert api.objects[NPS]["status"]["buckets"] == expected_buckets({"seccomp/apps/a": "sha256:1",
                                                                      "seccomp/apps/b": "sha256:2"})


async def test_too_many_failures_are_cut_and_say_so(api: FakeApi) -> None:
    reporter = Reporter(api, "node-a")
    await reporter.ensure_object()
    for i in range(nodereport.MAX_FAILURES + 5):
        reporter.processed(f"seccomp/apps/p{i:04d}", "sha256:1", Failure("sha256:1", "x" * 1000))
    await reporter.flush()
    status = api.objects[NPS]["status"]
    assert len(status["failures"]) == nodereport.MAX_FAILURES and status["failuresTruncated"] is True
    assert {len(f["message"]) for f in status["failures"].values()} == {nodereport.MAX_MESSAGE}
    for i in range(10):
        reporter.forget(f"seccomp/apps/p{i:04d}")
    await reporter.flush()
    assert len(api.objects[NPS]["status"]["failures"]) == nodereport.MAX_FAILURES - 5
    assert api.objects[NPS]["status"]["failuresTruncated"] is False


async def test_recreate_resends_everything(api: FakeApi) -> None:
    reporter = Reporter(api, "node-a")
    await reporter.ensure_object()
    reporter.processed("seccomp/apps/a", "sha256:1")
    reporter.set_facts(ready=True)
    await reporter.flush()
    del api.objects[NPS]
    await reporter.recreate()
    await reporter.flush()
    assert api.objects[NPS]["status"]["buckets"] == expected_buckets({"seccomp/apps/a": "sha256:1"})
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
