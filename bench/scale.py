"""Benchmark 5: many profiles over many namespaces and nodes.

Sequence: nodes and their agents (``bench.fleet``: every agent in one process) come up; with the operator
stopped, the profiles are created and every node installs them; then the operator starts and must give every
profile its finalizer and status (``cold``: the restart after an outage during which all profiles appeared);
then it is restarted once more with every status current (``warm``: time until it reconciled every profile
once, and how much it writes doing so); then single profile changes count API writes per change from the
kube-apiserver's own ``apiserver_request_total``. Runs last: it leaves its profiles behind (the control plane
is discarded after the run).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from functools import partial
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench import objects, processes
from bench.cluster import Cluster, difference
from bench.histogram import Histogram
from bench.report import Figure, Target
from bench.sizes import Sizes
from bench.stats import summarize
from bench.watch import Tracker
from devtools.ports import free_port
from devtools.processes import Process
from devtools.waiting import wait_for
from secprofiles.model import schema
from secprofiles.objects import Object
from secprofiles.resources import resource_path

OPERATOR_RSS_TARGET_MIB = 256.0
WRITES_PER_NODE_TARGET = 1.0
TIMEOUT = 1800.0
MIB = 1024.0
AGENT_WRITE = "PATCH nodeprofilestatuses/status"
REPORT_PATCH = {"verb": "PATCH", "resource": "nodeprofilestatuses", "subresource": "status"}
OPERATOR_WRITES = ("PATCH seccompprofiles/status", "PATCH seccompprofiles", "POST events")


async def _reconciles(port: int) -> float:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())
    try:
        text = await asyncio.to_thread(fetch)
    except OSError:
        return 0.0  # not listening yet
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "secprofiles_reconciles_total")


async def run(cluster: Cluster, sizes: Sizes, work: Path) -> list[Figure]:
    """The whole sequence; see the module docstring."""
    count, spaces, node_count = sizes.scale_profiles, sizes.scale_namespaces, sizes.scale_nodes
    for i in range(spaces):
        await cluster.namespace(f"bench-scale-{i:02d}")
    nodes = [f"bench-scale-{i:02d}" for i in range(node_count)]
    for node in nodes:
        await cluster.create(objects.node(node, tainted=False))
    fleet = processes.fleet(cluster.kubeconfig, work / "nodes", nodes, apparmor=False)
    port = free_port()
    operator = processes.operator(cluster.kubeconfig, work / "operator.log", port)
    tracker = Tracker(cluster.api, resource_path(schema.SECCOMP_PROFILE))
    conditions = {"profiles": count, "namespaces": spaces, "nodes": node_count,
                  "agents": f"{node_count} in 1 process (fleet)",
                  "agents_how": "Agent objects in ONE process (bench.fleet), one API client each, sharing one core",
                  "operator": "1 process, --standalone"}
    profiles = [objects.seccomp_profile(f"bench-scale-{i % spaces:02d}", f"bench-s-{i:05d}") for i in range(count)]
    keys = {f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in profiles}
    figures: list[Figure] = []
    try:
        fleet.start()
        await cluster.wait_nodes_report(nodes, 0, 300)
        await tracker.start()
        created_in = await cluster.create_many(profiles)
        started = time.perf_counter()
        await cluster.wait_nodes_report(nodes, count, TIMEOUT)
        agents_in = time.perf_counter() - started + created_in
        fleet.check()

        before = await cluster.apiserver_writes()
        operator.start()
        await tracker.until(lambda: keys <= tracker.installed_now, TIMEOUT, f"all {count} profiles Installed")
        cold = time.perf_counter() - operator.started_at
        cold_memory = operator.memory()
        cold_writes = difference(await cluster.apiserver_writes(), before)

        operator.stop()
        before = await cluster.apiserver_writes()
        operator.start()
        await wait_for(partial(_at_least, port, count), TIMEOUT, f"{count} reconciles after a restart", interval=0.25)
        warm = time.perf_counter() - operator.started_at
        await asyncio.sleep(2)
        warm_memory = operator.memory()
        warm_writes = difference(await cluster.apiserver_writes(), before)

        changes, report_seconds = await _changes(cluster, tracker, profiles, sizes.scale_changes, fleet, operator)
        figures = _figures(conditions, count, node_count, created_in, agents_in, cold, cold_memory, cold_writes,
                           warm, warm_memory, warm_writes, changes, report_seconds)
    finally:
        await tracker.stop()
        operator.stop()
        fleet.stop()
    return figures


async def _at_least(port: int, count: int) -> bool:
    return await _reconciles(port) >= count


def _installed_at(tracker: Tracker, key: str, generation: int) -> bool:
    return tracker.installed_generation.get(key, 0) >= generation


async def _changes(cluster: Cluster, tracker: Tracker, profiles: list[Object], changes: int,
                   fleet: Process, operator: Process
                   ) -> tuple[list[tuple[float, dict[str, int]]], dict[str, float]]:
    """Change one profile at a time: (seconds until Installed everywhere, API writes) per change, and the
    API server's own time for the agents' NodeProfileStatus patches meanwhile."""
    results = []
    duration = "apiserver_request_duration_seconds"
    report_before = Histogram.parse(await cluster.apiserver_metric_text(), duration, REPORT_PATCH)
    for change in range(changes):
        profile = profiles[(change * 7919) % len(profiles)]  # spread over namespaces
        meta = profile["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        # variant 1..3 always differs from the created variant 0: every change is a new content hash
        spec = objects.seccomp_profile(meta["namespace"], meta["name"], variant=change % 3 + 1)["spec"]
        await asyncio.sleep(2)  # let trailing writes of the previous step land before the snapshot
        before = await cluster.apiserver_writes()
        started = time.perf_counter()
        patched = await cluster.api.patch(resource_path(schema.SECCOMP_PROFILE, meta["namespace"], meta["name"]),
                                          {"spec": spec})
        generation = int(patched["metadata"]["generation"])
        await tracker.until(partial(_installed_at, tracker, key, generation), 300,
                            f"{key} generation {generation} Installed")
        took = time.perf_counter() - started
        await asyncio.sleep(2)
        results.append((took, difference(await cluster.apiserver_writes(), before)))
        fleet.check()
        operator.check()
    window = Histogram.parse(await cluster.apiserver_metric_text(), duration, REPORT_PATCH).minus(report_before)
    return results, {"patches": window.count, "mean_s": round(window.mean, 4),
                     "p99_bucket_upper_s": window.quantile_bound(0.99)}


def _figures(conditions: dict[str, object], count: int, node_count: int, created_in: float, agents_in: float,
             cold: float, cold_memory: dict[str, int], cold_writes: dict[str, int], warm: float,
             warm_memory: dict[str, int], warm_writes: dict[str, int],
             changes: list[tuple[float, dict[str, int]]], report_seconds: dict[str, float]) -> list[Figure]:
    agent_writes = [writes.get(AGENT_WRITE, 0) for _, writes in changes]
    operator_writes = [sum(writes.get(k, 0) for k in OPERATOR_WRITES) - 1 for _, writes in changes]  # -1: ours
    change_times = summarize([took for took, _ in changes])
    per_node = summarize([w / node_count for w in agent_writes])
    return [
        Figure(id="scale.create", title=f"scale: create {count} profiles (16 in flight), operator stopped",
               value=created_in, unit="s", conditions=conditions,
               samples={"agents_all_installed_s": round(agents_in, 2)},
               notes=[f"every node reported all {count} Installed {agents_in:.1f} s after the first create"]),
        Figure(id="scale.restart.cold", title=f"scale: operator start -> all {count} Installed (statuses to write)",
               value=cold, unit="s", conditions=conditions, samples={"api_writes": cold_writes},
               notes=["the operator was down while every profile was created: it adds its finalizer and writes "
                      "every status (see samples.api_writes)"]),
        Figure(id="scale.restart.warm", title=f"scale: operator restart -> {count} reconciled (statuses current)",
               value=warm, unit="s", conditions=conditions, samples={"api_writes": warm_writes},
               notes=["until secprofiles_reconciles_total reached the profile count"]),
        Figure(id="scale.operator.rss", title=f"scale: operator RSS, {count} profiles, {node_count} nodes",
               value=cold_memory["VmRSS"] / MIB, unit="MiB", conditions=conditions,
               target=Target(OPERATOR_RSS_TARGET_MIB, "MiB"),
               samples={"after_cold_catch_up_kib": cold_memory, "after_warm_restart_kib": warm_memory}),
        Figure(id="scale.operator.peak_rss", title=f"scale: operator peak RSS (VmHWM), {count} profiles",
               value=max(cold_memory["VmHWM"], warm_memory["VmHWM"]) / MIB, unit="MiB", conditions=conditions,
               target=Target(OPERATOR_RSS_TARGET_MIB, "MiB")),
        Figure(id="scale.writes.agent_per_node", title="scale: agent API writes per node per profile change",
               value=per_node.max, unit="writes", conditions={**conditions, "repetitions": len(changes)},
               target=Target(WRITES_PER_NODE_TARGET, "writes"),
               samples={"per_change": [w for _, w in changes], "value": "max over changes"}),
        Figure(id="scale.writes.operator", title="scale: operator API writes per profile change",
               value=summarize([float(w) for w in operator_writes]).p50, unit="writes",
               conditions={**conditions, "repetitions": len(changes)},
               samples={"per_change": operator_writes, "value": "median over changes"},
               notes=["status patches + Events; the benchmark's own spec patch is not counted"]),
        Figure(id="scale.change.installed", title="scale: one profile change -> Installed on all nodes, p50",
               value=change_times.p50, unit="s", conditions={**conditions, "repetitions": len(changes)},
               samples={"s": change_times.as_dict(), "apiserver_time_per_agent_report_patch": report_seconds},
               notes=["each NodeProfileStatus carries one entry per profile: every agent patch makes the API server "
                      "validate and store, and the operator decode, the whole object"]),
    ]
