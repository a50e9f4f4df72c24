"""The operator killed with SIGKILL in the middle of a deletion and of a base-profile change.

Own dev cluster, the operator and two real agents (``fleet.running_fleet``). The operator is the only
holder of the ``secprofiles.io/in-use-protection`` finalizer, so a restart at the wrong moment could leave it
stuck (object never gone), release it too early (while a pod still uses the profile), or leave the
dependents of a changed base profile with stale status. After each restart the whole installation must
converge (``Fleet.until_converged``): statuses, node reports, node files, no orphan files.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from secprofiles.controller.reconciler import FINALIZER
from tests.integration.fleet import Fleet, running_fleet, seccomp_spec

pytestmark = pytest.mark.controlplane
NS = "restarts"
CONVERGE_TIMEOUT = 30.0


@pytest.fixture(scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    async with running_fleet(tmp_path_factory.mktemp("restarts"), NS) as fleet:
        yield fleet


def kill_and_start(fleet: Fleet) -> None:
    """kill -9 the operator and start it again at once (as a Deployment would, minus the delay)."""
    fleet.operator.stop(signal.SIGKILL)
    fleet.operator.start()


def pod_using(name: str, profile: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS}, "spec": {
        "automountServiceAccountToken": False,
        "containers": [{"name": "c", "image": "busybox", "securityContext": {"seccompProfile": {
            "type": "Localhost", "localhostProfile": f"secprofiles/{NS}/{profile}.json"}}}]}}


async def test_kill_9_during_deletion_of_an_in_use_profile(
        fleet: Fleet, report_figure: Callable[[str], None]) -> None:
    profiles, api = fleet.profiles, fleet.api
    await profiles.put("guarded", seccomp_spec("chmod"))
    await fleet.until_converged(CONVERGE_TIMEOUT)
    obj = await api.get(profiles.path("guarded"))
    assert obj is not None and FINALIZER in obj["metadata"]["finalizers"]
    await api.create(f"/api/v1/namespaces/{NS}/pods", pod_using("user", "guarded"))
    kills = 0

    # 1. Killed right after the deletion was requested.
    await api.delete(profiles.path("guarded"))
    kill_and_start(fleet)
    kills += 1

    async def terminating() -> dict[str, Any] | None:
        status = ((await api.get(profiles.path("guarded"))) or {}).get("status") or {}
        return status if status.get("phase") == "Terminating" else None

    status = await wait(terminating, "Terminating after the restart")
    assert status["inUseBy"] == {"count": 1, "pods": [f"{NS}/user"]}

    # 2. Killed while Terminating, pod still there: the new operator must keep the finalizer. A profile created
    # after the restart is reconciled after the deleted one (one queue, in listing order): once it has a
    # status, the terminating profile was looked at and must still be there.
    kill_and_start(fleet)
    kills += 1
    await profiles.put("sentinel", seccomp_spec("mkdir"))
    await wait(lambda: _phase(fleet, "sentinel"), "the restarted operator to reconcile")
    obj = await api.get(profiles.path("guarded"))
    assert obj is not None and obj["metadata"]["finalizers"] == [FINALIZER], "released while in use"
    for agent in fleet.agents:  # still installed: the pod may restart its containers
        assert agent.file(NS, "guarded").exists()

    # 3. The pod goes, and the operator is killed right away: the next one must release the finalizer.
    await api.request("DELETE", f"/api/v1/namespaces/{NS}/pods/user", params={"gracePeriodSeconds": "0"})
    kill_and_start(fleet)
    kills += 1
    started = time.monotonic()
    profiles.specs["guarded"] = None  # gone: object, files on both nodes, node status entries
    seconds = await fleet.until_converged(CONVERGE_TIMEOUT)
    figure = (f"{kills} operator kill -9 during an in-use deletion; finalizer kept while in use, released and "
              f"files removed from {len(fleet.agents)} nodes {seconds:.1f}s after the last restart")
    print(f"\n{figure}")
    report_figure(figure)
    assert time.monotonic() - started < CONVERGE_TIMEOUT


async def test_kill_9_during_a_base_profile_change(fleet: Fleet, report_figure: Callable[[str], None]) -> None:
    seed = int(os.environ.get("SECPROFILES_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    profiles = fleet.profiles
    await profiles.put("a", seccomp_spec("chmod"))
    await profiles.put("b", seccomp_spec("mkdir", base="a"))
    await profiles.put("c", seccomp_spec("rmdir", base="b"))  # two levels: a change of a re-renders b and c
    await fleet.until_converged(CONVERGE_TIMEOUT)
    rounds, times, delays = 3, [], []
    for i, extra in enumerate(["chown", "fchown", "lchown"][:rounds]):
        await profiles.put("a", seccomp_spec("chmod", extra))
        delay = rng.uniform(0.0, 0.5)  # before, while or after the statuses of a, b and c are updated
        await asyncio.sleep(delay)
        delays.append(delay)
        kill_and_start(fleet)
        if i == 1:  # once, a second change while the operator starts up
            await profiles.put("b", seccomp_spec("mkdir", "rename", base="a"))
        times.append(await fleet.until_converged(CONVERGE_TIMEOUT))
    figure = (f"{rounds} operator kill -9 during base-profile changes (seed {seed}, delays "
              f"{', '.join(f'{d:.2f}' for d in delays)}s): dependents re-rendered and Installed on "
              f"{len(fleet.agents)} nodes, max {max(times):.1f}s after the restart")
    print(f"\n{figure}")
    report_figure(figure)


async def wait(probe: Callable[[], Any], what: str, timeout: float = CONVERGE_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await probe():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def _phase(fleet: Fleet, name: str) -> str | None:
    obj = await fleet.api.get(fleet.profiles.path(name)) or {}
    phase: str | None = (obj.get("status") or {}).get("phase")
    return phase
