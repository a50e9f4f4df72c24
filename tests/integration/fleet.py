"""A whole secprofiles installation on its own dev cluster, for fault-injection tests.

One ``DevCluster`` per test module (so restarting its API server or etcd disturbs no other test), the
operator as a process, and simulated nodes as agent processes. ``Profiles`` is what the test believes the
SeccompProfiles are; ``until_converged`` checks the whole chain against it: each profile's status
(Installed on every node, with the hash the model renders), every node's NodeProfileStatus (exactly the digests of
the live renderings, no failure), the bytes of every node file, and that nothing is left for deleted profiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devtools.build import ensure_binary
from devtools.cluster import DevCluster, DevClusterError
from devtools.objects import create_node, ensure_namespace, install_crds
from secprofiles.kube.client import KubeApi
from secprofiles.model import keys, seccomp
from secprofiles.model.evaluate import evaluate
from secprofiles.resources import resource_path
from tests.integration.kube import open_api
from tests.integration.processes import AgentProcess, OperatorProcess
from tests.reports import expected_buckets

GROUP_VERSION = "secprofiles.io/v1alpha1"
T = TypeVar("T")


def seccomp_spec(*names: str, base: str | None = None) -> dict[str, Any]:
    """A SeccompProfile spec denying ``names``, optionally on a base profile."""
    spec: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW",
                            "syscalls": [{"names": sorted(names), "action": "SCMP_ACT_ERRNO"}]}
    if base:
        spec["baseProfileName"] = base
    return spec


async def _fresh_connection(call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call``, once more if it failed on a pooled connection to an API server that was restarted since
    (the server is known to be up: it never saw the first attempt)."""
    try:
        return await call()
    except OSError:  # kubeapi.ApiUnreachableError or a reset connection
        return await call()


@dataclass
class Profiles:
    """The SeccompProfiles of one namespace as the test wrote them (None: deleted)."""

    api: KubeApi
    namespace: str
    specs: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def path(self, name: str | None = None) -> str:
        return resource_path("SeccompProfile", self.namespace, name)

    async def put(self, name: str, spec: dict[str, Any]) -> None:
        """Create the profile, or replace its spec."""
        if self.specs.get(name) is None:
            body = {"apiVersion": GROUP_VERSION, "kind": "SeccompProfile",
                    "metadata": {"name": name, "namespace": self.namespace}, "spec": spec}
            await _fresh_connection(lambda: self.api.create(self.path(), body))
        else:
            patch = [{"op": "replace", "path": "/spec", "value": spec}]
            await _fresh_connection(lambda: self.api.patch(self.path(name), patch, "json"))
        self.specs[name] = spec

    async def delete(self, name: str) -> None:
        """Delete the profile (the operator's finalizer decides when it is gone)."""
        await _fresh_connection(lambda: self.api.delete(self.path(name)))
        self.specs[name] = None

    def live(self) -> dict[str, dict[str, Any]]:
        return {name: spec for name, spec in self.specs.items() if spec is not None}

    async def rendered(self) -> dict[str, seccomp.Rendered]:
        """What the model renders for each live profile (base profiles resolved among them)."""
        live = self.live()

        def lookup(namespace: str, name: str) -> dict[str, Any] | None:
            return live.get(name) if namespace == self.namespace else None

        result = {}
        for name, spec in live.items():
            obj = {"apiVersion": GROUP_VERSION, "kind": "SeccompProfile",
                   "metadata": {"name": name, "namespace": self.namespace}, "spec": spec}
            outcome = await evaluate(obj, lookup)
            assert isinstance(outcome.rendered, seccomp.Rendered), outcome.findings
            result[name] = outcome.rendered
        return result


@dataclass
class Fleet:
    """The cluster, the operator and the agents of one test module."""

    cluster: DevCluster
    api: KubeApi
    operator: OperatorProcess
    agents: list[AgentProcess]
    profiles: Profiles

    async def mismatch(self) -> str:
        """The first way the installation differs from the model, or "" when it is converged."""
        rendered = await self.profiles.rendered()
        processed = {keys.seccomp_key(self.profiles.namespace, name): r.content_hash for name, r in rendered.items()}
        for agent in self.agents:  # every node reports exactly the live renderings (the cluster is the fleet's own)
            report = await self.api.get(resource_path("NodeProfileStatus", name=agent.node)) or {}
            status = report.get("status") or {}
            if status.get("buckets") != expected_buckets(processed) or status.get("failures"):
                return f"{agent.node} does not report exactly the current renderings: {status.get('failures')}"
        for name, spec in self.profiles.specs.items():
            obj = await self.api.get(self.profiles.path(name))
            if spec is None:
                if obj is not None:
                    return f"{name}: deleted but still there (finalizers {obj['metadata'].get('finalizers')})"
                for agent in self.agents:
                    if agent.file(self.profiles.namespace, name).exists():
                        return f"{name}: deleted but its file is on {agent.node}"
                continue
            expected = rendered[name]
            status = (obj or {}).get("status") or {}
            want = {"phase": "Installed", "contentHash": expected.content_hash,
                    "nodes": {"desired": len(self.agents), "installed": len(self.agents), "failed": 0}}
            got = {k: status.get(k) for k in want}
            if got != want:
                return f"{name}: status {got}, want {want}"
            for agent in self.agents:
                path = agent.file(self.profiles.namespace, name)
                if not path.exists() or path.read_bytes() != expected.content:
                    return f"{name}: file on {agent.node} is not the current rendering"
        for agent in self.agents:  # no orphan files at all
            directory = agent.seccomp_root / self.profiles.namespace
            extra = sorted({p.name for p in directory.iterdir()} - {f"{n}.json" for n in rendered}) \
                if directory.is_dir() else []
            if extra:
                return f"orphan files on {agent.node}: {extra}"
        return ""

    async def until_converged(self, timeout: float, since: float | None = None) -> float:
        """Wait until converged; return the seconds from ``since`` (default: now). Fails after ``timeout``."""
        started = time.monotonic() if since is None else since
        deadline = time.monotonic() + timeout
        last = "not checked"
        while time.monotonic() < deadline:
            last = await self.mismatch()
            if not last:
                return time.monotonic() - started
            for process in (self.operator, *self.agents):
                assert process.running, f"a process exited:\n{process.tail()}"
            await asyncio.sleep(0.05)
        raise AssertionError(f"not converged after {timeout}s: {last}\n--- operator log ---\n"
                             f"{self.operator.tail()}\n--- agent log ---\n{self.agents[0].tail()}")


def log_offset(path: Path) -> int:
    """The current size of a log: read from here on to see only what comes after."""
    return path.stat().st_size if path.exists() else 0


def log_since(path: Path, offset: int) -> str:
    """What a log gained since ``offset``."""
    with path.open(errors="replace") as handle:
        handle.seek(offset)
        return handle.read()


@contextlib.asynccontextmanager
async def running_fleet(base: Path, namespace: str, nodes: int = 2,
                        operator_args: tuple[str, ...] = ()) -> AsyncIterator[Fleet]:
    """Start a dev cluster of its own under ``base``, the operator and ``nodes`` agents; stop all at the end.

    Must run on the main thread: the cluster's processes die with the thread that started them.
    """
    try:
        cluster = DevCluster(base / "cluster", binary=ensure_binary(), stop_grace=2, quiet=True)  # throw-away
        cluster.start()
    except DevClusterError as error:
        pytest.fail(f"the fault-injection control plane did not start: {error}", pytrace=False)
    agents: list[AgentProcess] = []
    operator = OperatorProcess(cluster.kubeconfig, base / "operator.log", *operator_args)
    try:
        async with open_api(cluster.kubeconfig) as api:
            await install_crds(api)
            await ensure_namespace(api, namespace)
            for i in range(nodes):
                await create_node(api, f"node-{i}")
                agents.append(AgentProcess(cluster.kubeconfig, f"node-{i}", base / f"node-{i}"))
            operator.start()
            for agent in agents:
                await asyncio.to_thread(agent.start)
            yield Fleet(cluster, api, operator, agents, Profiles(api, namespace))
    finally:
        operator.stop()
        for agent in agents:
            agent.stop()
        cluster.stop()
