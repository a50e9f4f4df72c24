"""Crash safety of the node agent: ``kill -9`` at random moments while profiles keep changing.

A real agent process (simulated node: its own host root) is killed with SIGKILL after a random delay, over
and over, while a writer task keeps changing SeccompProfiles (syscalls, base profiles, deletions and
re-creations). After every kill, every file under the agent's seccomp subtree is checked: a file at a final
path must be the exact bytes the model renders for some version the profile had (so: complete, parsable
JSON); anything else must be a ``.tmp-`` file, and those must be gone once the agent has run again.
Periodically, and at the end, the writer pauses and the node must converge: the files are exactly the
current renderings and the NodeProfileStatus reports exactly them (the digests of their buckets), no failure.

The RNG seed is printed (and can be fixed with SECPROFILES_CRASH_SEED) so a failure can be replayed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster import DevCluster
from devtools.objects import create_node, ensure_namespace, install_crds
from devtools.waiting import wait_for
from secprofiles.agent.files import TMP_PREFIX
from secprofiles.kube.client import ApiError, KubeApi
from secprofiles.model import keys, seccomp
from secprofiles.model.evaluate import evaluate
from secprofiles.resources import resource_path
from tests.integration.kube import cluster_renderings, open_api
from tests.integration.processes import AgentProcess
from tests.reports import bucket_holds, failure

pytestmark = pytest.mark.controlplane
SYSCALLS = ["chmod", "fchmod", "fchmodat", "mkdir", "rmdir", "chown", "fchown", "lchown", "unlink", "rename",
            "symlink", "link", "mount", "umount2", "ptrace", "bpf"]
PROFILES = 24  # changed at random; a base chain: p00 <- p01 <- p02, and p03 on p00
DEPENDENTS = 100  # d000.. on base p00: each change of p00 rewrites them all, a burst of installs to crash into
CHURN = ("churn-a", "churn-b")  # deleted and created again by the writer


@dataclass
class Model:
    """The profiles as the writer last set them, and every rendering each profile ever had."""

    namespace: str
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    allowed: dict[str, set[bytes]] = field(default_factory=dict)
    current: dict[str, seccomp.Rendered] = field(default_factory=dict)

    def obj(self, name: str) -> dict[str, Any]:
        return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
                "metadata": {"name": name, "namespace": self.namespace}, "spec": self.specs[name]}

    async def record(self, changed: set[str] | None = None) -> None:
        """Render the changed profiles and everything built on them (default: all); each rendering becomes an
        allowed file content."""
        def lookup(namespace: str, name: str) -> dict[str, Any] | None:
            return self.specs.get(name) if namespace == self.namespace else None

        todo = set(self.specs) if changed is None else set(changed)
        while True:  # add dependents until nothing new
            more = {n for n, s in self.specs.items() if s.get("baseProfileName") in todo} - todo
            if not more:
                break
            todo |= more
        for name in todo:
            if name not in self.specs:
                self.current.pop(name, None)
                continue
            outcome = await evaluate(self.obj(name), lookup)
            assert isinstance(outcome.rendered, seccomp.Rendered), outcome.findings
            self.current[name] = outcome.rendered
            self.allowed.setdefault(name, set()).add(outcome.rendered.content)


def spec(rng: random.Random, base: str | None = None) -> dict[str, Any]:
    names = sorted(rng.sample(SYSCALLS, rng.randint(1, 6)))
    result: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW",
                              "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO"}]}
    if base:
        result["baseProfileName"] = base
    return result


BASES = {"p01": "p00", "p02": "p01", "p03": "p00"}


class Writer:
    """Changes profiles continuously (pausable) and keeps the model in step with what it wrote."""

    def __init__(self, api: KubeApi, model: Model, rng: random.Random) -> None:
        self.api, self.model, self.rng = api, model, rng
        self.running = asyncio.Event()
        self.changes = 0
        self.lock = asyncio.Lock()  # one change at a time: the model must follow the server's order

    async def create_all(self) -> None:
        for i in range(PROFILES):
            name = f"p{i:02}"
            await self._put(name, spec(self.rng, BASES.get(name)), create=True)
        for i in range(DEPENDENTS):
            await self._put(f"d{i:03}", spec(self.rng, "p00"), create=True)
        for name in CHURN:
            await self._put(name, spec(self.rng), create=True)
        await self.model.record()

    async def _put(self, name: str, body: dict[str, Any], create: bool = False) -> None:
        if create:
            await self.api.create(resource_path("SeccompProfile", self.model.namespace), {
                "apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
                "metadata": {"name": name, "namespace": self.model.namespace}, "spec": body})
        else:
            await self.api.patch(resource_path("SeccompProfile", self.model.namespace, name),
                                 [{"op": "replace", "path": "/spec", "value": body}], "json")
        self.model.specs[name] = body

    async def change_base(self) -> None:
        """Change p00: every profile built on it is rewritten on the node."""
        async with self.lock:
            await self._put("p00", spec(self.rng))
            await self.model.record({"p00"})
            self.changes += 1

    async def step(self) -> None:
        """One change: mostly a profile's syscalls (bases included, so dependents re-render), sometimes churn."""
        async with self.lock:
            await self._step()

    async def _step(self) -> None:
        roll = self.rng.random()
        if roll < 0.15:
            name = self.rng.choice(CHURN)
            if name in self.model.specs:
                await self.api.delete(resource_path("SeccompProfile", self.model.namespace, name))
                del self.model.specs[name]
            else:
                await self._put(name, spec(self.rng), create=True)
        else:
            name = "p00" if roll < 0.25 else f"p{self.rng.randrange(PROFILES):02}"
            await self._put(name, spec(self.rng, BASES.get(name)))
        await self.model.record({name})
        self.changes += 1

    async def run(self) -> None:
        while True:
            await self.running.wait()
            try:
                await self.step()
            except ApiError as error:
                if error.status not in (404, 409):  # a deleted profile still finalizing: try another change
                    raise
            await asyncio.sleep(self.rng.uniform(0.0, 0.06))


@dataclass
class Scan:
    """What one look at the node's seccomp subtree found."""

    final: int = 0
    temps: set[Path] = field(default_factory=set)


def scan(agent: AgentProcess, model: Model) -> Scan:
    """Check every file under the subtree: final paths hold an exact rendering of some version; else a temp file."""
    result = Scan()
    for directory, _, names in os.walk(agent.seccomp_root):
        for file_name in names:
            path = Path(directory) / file_name
            if file_name.startswith(TMP_PREFIX):
                result.temps.add(path)
                continue
            relative = path.relative_to(agent.seccomp_root)
            assert relative.parent == Path(model.namespace) and file_name.endswith(".json"), f"unexpected {path}"
            name = file_name.removesuffix(".json")
            content = path.read_bytes()
            json.loads(content)  # parsable (implied by the next check; kept for a clear failure message)
            assert content in model.allowed.get(name, set()), f"{relative} is no version of {name}: {content!r}"
            result.final += 1
    return result


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


async def converged(api: KubeApi, agent: AgentProcess, model: Model) -> bool:
    """Files are exactly the current renderings, no temp files, and the node status reports them Installed."""
    directory = agent.seccomp_root / model.namespace
    on_disk = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    if on_disk != {f"{name}.json" for name in model.current}:
        return False
    for name, rendered in model.current.items():
        if agent.file(model.namespace, name).read_bytes() != rendered.content:
            return False
    report = await api.get(resource_path("NodeProfileStatus", name=agent.node)) or {}
    status = report.get("status") or {}
    processed = await cluster_renderings(api)  # other tests' profiles share the buckets: all of them
    wanted = {keys.seccomp_key(model.namespace, name): r.content_hash for name, r in model.current.items()}
    mine = {k: h for k, h in processed.items() if k.startswith(f"seccomp/{model.namespace}/")}
    return mine == wanted and all(bucket_holds(status, processed, key) and not failure(status, key) for key in wanted)


@pytest.fixture
async def crash_setup(devcluster: DevCluster, tmp_path: Path) -> AsyncIterator[tuple[KubeApi, AgentProcess, Model]]:
    async with open_api(devcluster.kubeconfig) as api:
        await install_crds(api)
        namespace = f"crash-{uuid.uuid4().hex[:6]}"
        await ensure_namespace(api, namespace)
        node = f"crash-node-{uuid.uuid4().hex[:6]}"
        await create_node(api, node)
        agent = AgentProcess(devcluster.kubeconfig, node, tmp_path / node)
        try:
            yield api, agent, Model(namespace)
        finally:
            agent.stop()
            await api.delete(f"/api/v1/namespaces/{namespace}")
            await api.delete(f"/api/v1/nodes/{node}")


async def kill_loop(api: KubeApi, agent: AgentProcess, model: Model, kills: int, converge_every: int,
                    report_figure: Callable[[str], None]) -> None:
    seed = int(os.environ.get("SECPROFILES_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\ncrash loop seed {seed} (SECPROFILES_CRASH_SEED={seed} replays the same choices)")
    rng = random.Random(seed)
    writer = Writer(api, model, rng)
    await writer.create_all()
    writer.running.set()
    writing = asyncio.create_task(writer.run())
    files_checked = temps_seen = kills_mid_write = kills_mid_sync = 0
    convergence: list[float] = []
    leftovers: set[Path] = set()

    async def converge() -> None:
        writer.running.clear()
        await asyncio.sleep(0.1)  # let a change in flight finish
        started = time.monotonic()
        await asyncio.to_thread(agent.start)
        await wait_for(lambda: converged(api, agent, model), 60, what=f"{agent.node} converged")
        convergence.append(time.monotonic() - started)
        assert not (leftovers & scan(agent, model).temps), "temp files left by a crash were not removed"
        leftovers.clear()
        writer.running.set()

    try:
        for kill in range(1, kills + 1):
            await asyncio.to_thread(agent.start)
            await asyncio.sleep(rng.uniform(0.0, 2.0))  # start-up, full sync and live updates all get hit
            if rng.random() < 0.5:  # and, half the time, a burst of rewrites just started
                await writer.change_base()
                await asyncio.sleep(rng.uniform(0.0, 0.3))
            assert agent.running, agent.tail()
            agent.kill()
            async with writer.lock:  # a change the agent saw is in the model too (it records after writing)
                found = scan(agent, model)
            files_checked += found.final
            temps_seen += len(found.temps)
            kills_mid_write += bool(found.temps - leftovers)
            kills_mid_sync += any(_read(agent.file(model.namespace, name)) != rendered.content
                                  for name, rendered in model.current.items())
            leftovers |= found.temps
            if writing.done():
                writing.result()
            if kill % converge_every == 0 and kill < kills:
                await converge()
                agent.kill()
        writer.running.clear()
        await asyncio.sleep(0.1)
        await converge()
        final = scan(agent, model)
        files_checked += final.final
    finally:
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
    # The last convergence ran with the writer paused: the final state is exactly the model's.
    assert final.final == len(model.current) and not final.temps
    figure = (f"{kills} kill -9 (seed {seed}), {writer.changes} profile changes, {files_checked} files checked, "
              f"{kills_mid_sync} kills with installs pending, {temps_seen} temp files seen after kills "
              f"({kills_mid_write} kills left one), "
              f"{len(convergence)} convergences, max {max(convergence):.1f}s")
    print(figure)
    report_figure(figure)
    assert files_checked > kills, "the kills left (almost) nothing to check"


async def test_kill_9_during_installs_short(
        crash_setup: tuple[KubeApi, AgentProcess, Model], report_figure: Callable[[str], None]) -> None:
    """The default-suite variant: ten kills, converging after the fifth and at the end."""
    await kill_loop(*crash_setup, kills=10, converge_every=5, report_figure=report_figure)


@pytest.mark.slow
async def test_kill_9_during_installs_200_times(
        crash_setup: tuple[KubeApi, AgentProcess, Model], report_figure: Callable[[str], None]) -> None:
    """The issue's loop: 200 kills, converging every 20th (nightly: ``make test-slow``)."""
    await kill_loop(*crash_setup, kills=200, converge_every=20, report_figure=report_figure)
