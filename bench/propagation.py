"""Benchmark 1: ``create`` of a profile until its status is Installed on all nodes, at 1, 10 and 100 nodes.

Reference: the same create's ADDED event on the benchmark's own watch (a bare client), measured in the run.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import objects, processes
from bench.cluster import Cluster
from bench.report import Figure, Reference, Target
from bench.sizes import Sizes
from bench.stats import summarize
from bench.watch import Tracker
from devtools.ports import free_port
from secprofiles.model import schema
from secprofiles.objects import Object
from secprofiles.resources import resource_path

TARGETS_P50 = {1: 1.0, 10: 2.0, 100: 5.0}  # seconds, from the issue
TIMEOUT = 180.0
APPARMOR_LOADER = ("recording loader: this kernel has no AppArmor; each node compiles the policy with "
                   "apparmor_parser -Q -K and records it in a simulated securityfs")


async def run(cluster: Cluster, sizes: Sizes, work: Path) -> list[Figure]:
    """All node counts, both kinds."""
    figures: list[Figure] = []
    for count in sizes.propagation_nodes:
        figures += await _at(cluster, sizes, count, work / f"propagation-{count}")
    return figures


def _agents_text(count: int, in_process: bool) -> str:
    return f"{count} in 1 process (fleet)" if in_process else f"{count} process(es)"


FLEET_NOTE = "Agent objects in ONE process (bench.fleet), one API client each, sharing one core"
PROCESS_NOTE = "one python -m secprofiles.agent process per node"


async def _at(cluster: Cluster, sizes: Sizes, count: int, base: Path) -> list[Figure]:
    namespace = f"bench-prop-{count}"
    await cluster.namespace(namespace)
    nodes = [f"bench-prop{count}-{i:03d}" for i in range(count)]
    for node in nodes:
        await cluster.create(objects.node(node, tainted=False))
    in_process = count > sizes.max_agent_processes
    procs = ([processes.fleet(cluster.kubeconfig, base, nodes, apparmor=True)] if in_process else
             [processes.agent(cluster.kubeconfig, node, base / node, apparmor=True) for node in nodes])
    procs.append(processes.operator(cluster.kubeconfig, base / "operator.log", free_port()))
    trackers = {schema.SECCOMP_PROFILE: Tracker(cluster.api, resource_path(schema.SECCOMP_PROFILE, namespace)),
                schema.APPARMOR_PROFILE: Tracker(cluster.api, resource_path(schema.APPARMOR_PROFILE))}
    figures: list[Figure] = []
    try:
        for proc in procs:
            proc.start()
        await cluster.wait_nodes_report(nodes, 0, TIMEOUT)
        for tracker in trackers.values():
            await tracker.start()
        conditions = {"nodes": count, "repetitions": sizes.repetitions, "agents": _agents_text(count, in_process),
                      "agents_how": FLEET_NOTE if in_process else PROCESS_NOTE,
                      "operator": "1 process, --standalone", "warm_up": "1 create per kind, not counted",
                      "sequence": "sequential: each create waits for Installed before the next"}
        for kind, tracker in trackers.items():
            latencies, references = [], []
            for i in range(sizes.repetitions + 1):
                obj = _profile(kind, namespace, f"bench-p{count}-{i:03d}")
                installed, added = await _one(cluster, tracker, obj)
                for proc in procs:
                    proc.check()
                if i:  # the first is the warm-up
                    latencies.append(installed)
                    references.append(added)
            figures += _figures(kind, count, latencies, references,
                                {**conditions, **({"apparmor": APPARMOR_LOADER}
                                                  if kind == schema.APPARMOR_PROFILE else {})})
    finally:
        for tracker in trackers.values():
            await tracker.stop()
        for proc in procs:
            proc.stop()
    await cluster.delete_bench_objects([schema.SECCOMP_PROFILE, schema.APPARMOR_PROFILE, "Node"])
    return figures


def _profile(kind: str, namespace: str, name: str) -> Object:
    return objects.seccomp_profile(namespace, name) if kind == schema.SECCOMP_PROFILE else \
        objects.apparmor_profile(name)


async def _one(cluster: Cluster, tracker: Tracker, obj: Object) -> tuple[float, float]:
    """Create ``obj``; seconds until Installed and until its ADDED event."""
    meta = obj["metadata"]
    key = f"{meta.get('namespace') or ''}/{meta['name']}"
    started = time.perf_counter()
    await cluster.create(obj)
    await tracker.until(lambda: key in tracker.installed_at, TIMEOUT, f"{key} Installed")
    return tracker.installed_at[key] - started, tracker.added_at[key] - started


def _figures(kind: str, count: int, latencies: list[float], references: list[float],
             conditions: dict[str, object]) -> list[Figure]:
    label = "seccomp" if kind == schema.SECCOMP_PROFILE else "AppArmor"
    summary, reference = summarize(latencies), summarize(references)
    samples = {"create_to_installed_s": summary.as_dict(), "create_to_added_event_s": reference.as_dict(),
               "raw_create_to_installed_s": [round(x, 4) for x in latencies]}
    target = TARGETS_P50.get(count)
    what = "bare client: create -> ADDED watch event"
    ident, title = f"propagation.{label.lower()}.nodes{count}", f"{label} create->Installed, {count} node(s)"
    return [
        Figure(id=f"{ident}.p50", title=f"{title}, p50",
               value=summary.p50, unit="s", conditions=conditions,
               target=Target(target, "s") if target is not None else None,
               reference=Reference(what + ", p50", reference.p50, "s"), samples=samples),
        Figure(id=f"{ident}.p95", title=f"{title}, p95",
               value=summary.p95, unit="s", conditions=conditions,
               reference=Reference(what + ", p95", reference.p95, "s"), samples={}),
    ]
