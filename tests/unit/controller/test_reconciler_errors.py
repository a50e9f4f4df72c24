"""The operator's reconciler keeps working after any error of one attempt (it is the only worker)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from secprofiles.controller import reconciler
from secprofiles.controller.metrics import OperatorMetrics
from secprofiles.controller.state import ClusterState
from secprofiles.kube.client import KubeApi


class FlakyApi:
    """Fails the first write with an error no handler expects, then accepts everything."""

    def __init__(self) -> None:
        self.failures_left = 1
        self.status_patches: list[str] = []

    async def patch(self, path: str, body: Any, patch_type: str = "merge") -> dict[str, Any]:
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("something unexpected")
        if path.endswith("/status"):
            self.status_patches.append(path)
        return {}

    async def create(self, path: str, body: Any) -> dict[str, Any]:
        return {}


async def test_an_unexpected_error_is_retried_and_does_not_stop_the_worker(monkeypatch: Any) -> None:
    monkeypatch.setattr(reconciler, "_RETRY_DELAYS", (0.01,))
    state = ClusterState()
    state.apply_profile("ADDED", {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
                                  "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "1"},
                                  "spec": {"defaultAction": "SCMP_ACT_ALLOW"}})
    api = FlakyApi()
    metrics = OperatorMetrics()
    worker = reconciler.Reconciler(state, cast(KubeApi, api), metrics)
    task = asyncio.create_task(worker._work())
    worker.mark({"seccomp/ns/p"})
    try:
        for _ in range(200):
            if api.status_patches:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert api.failures_left == 0 and api.status_patches == ["/apis/secprofiles.io/v1alpha1/namespaces/ns/seccompprofiles/p/status"]
    # The metrics are this operator's own: one failed attempt and two reconciles counted, the phase published.
    assert metrics.errors.labels("SeccompProfile")._value.get() == 1
    assert metrics.reconciles.labels("SeccompProfile")._value.get() == 2
    assert metrics.profiles.labels("SeccompProfile", "Pending")._value.get() == 1
