"""Control-plane faults: kube-apiserver and etcd are killed and started again while profiles change.

The module runs its own dev cluster (``fleet.running_fleet``), the operator and two agents. Each case
changes profiles right before the fault, kills the component(s) with SIGKILL, keeps them down a moment,
starts them again with the same data and ports, changes profiles right after ``/readyz`` is back, and
then requires the whole installation to converge within 10 s of the API server's return (the first write
it serves again; /readyz comes first, and both delays are reported): every profile Installed on
both nodes with the hash of its latest spec, the files on disk identical, deleted profiles gone everywhere.

A restarted API server starts a fresh watch cache, so a watch resumed from a resourceVersion seen before
the restart is answered 410 Gone: the agents must log that they listed again (and Kopf, in the operator,
that it restarted its watch stream).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import AsyncIterator, Callable

import pytest

from secprofiles.kube.client import ApiError
from tests.integration.fleet import Fleet, log_offset, log_since, running_fleet, seccomp_spec

pytestmark = pytest.mark.controlplane
NS = "faults"
CONVERGE_WITHIN = 10.0
DOWN_SECONDS = 2.0
KOPF_410 = "Restarting the watch-stream"
AGENT_410 = "410 Gone"
ROUNDS = itertools.count()
EXTRA = ["lchown", "rename", "ptrace", "umount2", "chroot", "pivot_root"]


@pytest.fixture(scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    # DEBUG: Kopf logs its watch-stream restarts (its 410 handling) only at debug level.
    async with running_fleet(tmp_path_factory.mktemp("faults"), NS, operator_args=("--log-level", "DEBUG")) as fleet:
        profiles = fleet.profiles
        await profiles.put("base", seccomp_spec("chmod"))
        await profiles.put("child", seccomp_spec("mkdir", base="base"))
        for i in range(4):
            await profiles.put(f"p{i}", seccomp_spec("rmdir"))
        await fleet.until_converged(60)
        yield fleet


def restart(fleet: Fleet, fault: str, down: float) -> float:
    """Kill the component(s) with SIGKILL, keep them down, start them again; the monotonic time /readyz is back.

    Synchronous on purpose: the cluster's processes must be started from the main thread (they die with it).
    """
    components = {"kube-apiserver": ["kube-apiserver"], "etcd": ["etcd"], "both": ["kube-apiserver", "etcd"]}[fault]
    for name in components:
        fleet.cluster.kill_component(name, signal.SIGKILL)
    time.sleep(down)
    for name in reversed(components):  # etcd first: the API server needs it
        fleet.cluster.start_component(name)
    return time.monotonic()


async def writes_served(fleet: Fleet, round_: int) -> float:
    """When the API server serves writes to SeccompProfiles again: an annotation (ignored by operator and agents).

    /readyz can be back before that: after a long etcd outage, the API server's per-resource etcd clients
    reconnect on their own backoff. Convergence is measured from here, the API server's real return.
    """
    patch = {"metadata": {"annotations": {"tests.secprofiles.io/probe": str(round_)}}}
    deadline = time.monotonic() + 60
    while True:
        try:
            await fleet.api.patch(fleet.profiles.path("base"), patch)
            return time.monotonic()
        except (ApiError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(("fault", "down", "change_after"), [
    pytest.param("kube-apiserver", DOWN_SECONDS, True, id="kube-apiserver"),
    pytest.param("etcd", DOWN_SECONDS, True, id="etcd"),
    pytest.param("both", DOWN_SECONDS, True, id="both"),
    # Long outages with nothing changing afterwards: whatever failed to be written during them (status
    # patches, finalizers) must still go out promptly, not at the end of a long backoff.
    pytest.param("kube-apiserver", 25.0, False, marks=pytest.mark.slow, id="kube-apiserver-long-outage"),
    pytest.param("etcd", 25.0, False, marks=pytest.mark.slow, id="etcd-long-outage"),
])
async def test_restart_while_profiles_change_converges_within_10s(
        fleet: Fleet, fault: str, down: float, change_after: bool, report_figure: Callable[[str], None]) -> None:
    profiles, round_ = fleet.profiles, next(ROUNDS)
    extra = EXTRA[round_ % len(EXTRA)]  # differs from the previous round's: every put is a real change
    logs = [fleet.operator.log, *(agent.log for agent in fleet.agents)]
    offsets = {path: log_offset(path) for path in logs}
    # Right before the fault: a base change (re-renders its dependent) and a plain change.
    await profiles.put("base", seccomp_spec("chmod", "fchmodat", extra))
    await profiles.put("p0", seccomp_spec("rmdir", extra))
    killed = time.monotonic()
    ready = restart(fleet, fault, down)
    back = await writes_served(fleet, round_)
    if change_after:  # right after the return: a change, a new profile and a deletion (finalizer released)
        await profiles.put("p1", seccomp_spec("mount", extra))
        await profiles.put(f"new-{round_}", seccomp_spec("bpf", base="base"))
        await profiles.delete("p2" if "p2" in profiles.live() else "p3")
    seconds = await fleet.until_converged(45, since=back)

    since = {path: log_since(path, offset) for path, offset in offsets.items()}
    agent_relists = sum(text.count(AGENT_410) for path, text in since.items() if path != fleet.operator.log)
    operator_restarts = since[fleet.operator.log].count(KOPF_410)
    figure = (f"SIGKILL {fault}, down {ready - killed:.1f}s, profile writes served {back - ready:.1f}s after "
              f"/readyz; converged {seconds:.1f}s after that; "
              f"410 Gone handled: {agent_relists} agent relists, {operator_restarts} Kopf watch restarts")
    print(f"\n{figure}")
    report_figure(figure)
    assert seconds <= CONVERGE_WITHIN, figure
    if fault != "etcd":
        # A new API server, a new watch cache: resumed watches get 410 and must relist. Not necessarily every
        # agent's: a watch that reconnects after the cache has caught up to its resourceVersion resumes cleanly.
        assert agent_relists > 0, figure
        assert operator_restarts > 0, figure
    if change_after:  # put the deleted profile back for the next case
        await profiles.put("p2" if profiles.specs.get("p2") is None else "p3", seccomp_spec("rmdir"))
