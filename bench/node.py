"""Benchmarks 3 and 4: the agent's memory footprint, and node bootstrap (agent start -> readiness taint removed).

The agent is a real ``python -m secprofiles.agent`` process. The operator runs too, as in any cluster a node joins:
it publishes each profile's validated ``contentHash``, which spares the agent validating what the operator already
did (``model.evaluate``); nodes start only once every profile was validated. References, measured in the same
run: a bare loop doing write + fsync + rename (+ directory fsync, as the agent does) of the same rendered seccomp
files, and ``apparmor_parser -Q -K`` per AppArmor profile.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from bench import objects, processes
from bench.cluster import Cluster
from bench.report import Figure, Reference, Target
from bench.sizes import Sizes
from bench.stats import summarize
from devtools.processes import Process
from devtools.waiting import wait_for
from secprofiles.model import nodereport, schema
from secprofiles.model.apparmor_parser import PARSER
from secprofiles.model.evaluate import evaluate
from secprofiles.objects import Object
from secprofiles.resources import resource_path

RSS_TARGET_MIB = 64.0
RSS_TARGETS = {1000: RSS_TARGET_MIB, 10_000: RSS_TARGET_MIB}  # issue 8 at 1,000 profiles, issue 15 at 10,000
BOOT_TARGETS = {1000: 5.0, 10_000: 10.0}  # seconds: issue 8, issue 15
NAMESPACES = 10
TIMEOUT = 300.0
MIB = 1024.0


async def run(cluster: Cluster, sizes: Sizes, work: Path) -> list[Figure]:
    """AppArmor bootstrap first (alone), then footprint and seccomp bootstrap over the same seccomp profiles."""
    for i in range(NAMESPACES):
        await cluster.namespace(f"bench-node-{i}")
    operator = processes.operator(cluster.kubeconfig, work / "operator.log", 0)
    operator.start()
    try:
        figures = await _bootstrap_apparmor(cluster, sizes, work / "apparmor")
        figures += await _footprint(cluster, sizes, work / "footprint")
        figures += await _bootstrap_seccomp(cluster, sizes, work / "seccomp")
    finally:
        operator.stop()
    await cluster.delete_bench_objects([schema.SECCOMP_PROFILE])
    return figures


async def _validated(cluster: Cluster, kind: str, count: int) -> None:
    """Wait until the operator published a ``contentHash`` for ``count`` bench profiles of ``kind``."""
    async def done() -> bool:
        listing = await cluster.api.request("GET", resource_path(kind), params={"labelSelector": objects.BENCH_LABEL})
        return sum(bool((item.get("status") or {}).get("contentHash")) for item in listing["items"]) >= count

    await wait_for(done, TIMEOUT, f"{count} {kind}s validated by the operator", interval=0.5)


def _seccomp_objects(start: int, stop: int) -> list[Object]:
    return [objects.seccomp_profile(f"bench-node-{i % NAMESPACES}", f"bench-n-{i:05d}") for i in range(start, stop)]


async def _wait_untainted(cluster: Cluster, node: str, proc: Process) -> float:
    """Seconds from the agent's fork until its Node lost the readiness taint (polled every 50 ms)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        proc.check()
        if not await cluster.node_tainted(node, nodereport.NOT_READY_TAINT):
            return time.perf_counter() - proc.started_at
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{node}: taint not removed after {TIMEOUT}s:\n{proc.tail()}")


def _full_sync_seconds(proc: Process) -> float | None:
    for record in proc.json_records():
        if record.get("msg") == "full sync done":
            seconds = record.get("seconds")
            return float(seconds) if isinstance(seconds, int | float) else None
    return None


async def _boot(cluster: Cluster, node: str, base: Path, apparmor: bool) -> tuple[float, float | None]:
    """Start an agent on a new tainted node; (seconds to untainted, the agent's own full-sync seconds)."""
    await cluster.create(objects.node(node, tainted=True))
    proc = processes.agent(cluster.kubeconfig, node, base, apparmor)
    proc.start()
    try:
        elapsed = await _wait_untainted(cluster, node, proc)
        await processes.wait_log(proc, "full sync done", 30)
        return elapsed, _full_sync_seconds(proc)
    finally:
        proc.stop()
        await cluster.api.delete(f"/api/v1/nodes/{node}")


async def _bootstrap_apparmor(cluster: Cluster, sizes: Sizes, base: Path) -> list[Figure]:
    count = sizes.bootstrap_apparmor
    profile_objects = [objects.apparmor_profile(f"bench-aa-{i:04d}") for i in range(count)]
    await cluster.create_many(profile_objects)
    await _validated(cluster, schema.APPARMOR_PROFILE, count)
    per_profile = await _parser_reference(profile_objects, base / "reference")
    times, syncs = [], []
    for rep in range(sizes.bootstrap_repetitions):
        elapsed, sync = await _boot(cluster, f"bench-boot-aa-{rep}", base / f"boot-{rep}", apparmor=True)
        times.append(elapsed)
        syncs.append(sync)
    await cluster.delete_bench_objects([schema.APPARMOR_PROFILE])
    reference = summarize(per_profile)
    summary = summarize(times)
    return [Figure(
        id="bootstrap.apparmor", title=f"node bootstrap, {count} AppArmor profiles (agent start -> untainted)",
        value=summary.p50, unit="s",
        conditions={"profiles": count, "repetitions": sizes.bootstrap_repetitions, "agents": "1 process",
                    "value": "median over repetitions", "other_profiles": 0,
                    "apparmor": "recording loader (this kernel has no AppArmor): the agent validates with "
                                "apparmor_parser -Q -K and -N -K, then the loader compiles again with -Q -K"},
        reference=Reference(f"apparmor_parser -Q -K per profile, p50; x{count} = {reference.p50 * count:.2f} s",
                            reference.p50, "s"),
        samples={"boot_s": summary.as_dict(), "agent_full_sync_s": syncs,
                 "parser_per_profile_s": reference.as_dict(),
                 "parser_sequential_total_s": round(sum(per_profile), 3)})]


async def _parser_reference(profile_objects: list[Object], directory: Path) -> list[float]:
    """``apparmor_parser -Q -K`` of each rendered policy, one after another: seconds per profile."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    times = []
    for obj in profile_objects:
        outcome = await evaluate(obj, native_checks=False)
        assert outcome.rendered is not None, outcome.findings
        path = directory / obj["metadata"]["name"]
        await asyncio.to_thread(path.write_bytes, outcome.rendered.content)
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(PARSER, "-Q", "-K", str(path),
                                                       stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.PIPE)
        _, err = await process.communicate()
        times.append(time.perf_counter() - started)
        if process.returncode != 0:
            raise RuntimeError(f"apparmor_parser rejected {path}: {err.decode(errors='replace')}")
    return times


async def _footprint(cluster: Cluster, sizes: Sizes, base: Path) -> list[Figure]:
    node = "bench-footprint"
    await cluster.create(objects.node(node, tainted=False))
    proc = processes.agent(cluster.kubeconfig, node, base, apparmor=False)
    proc.start()
    figures = []
    conditions: dict[str, object] = {"agents": "1 process", "apparmor": "not enabled on this node (seccomp only)",
                  "settle": "1 s after the node reported the count Installed"}
    try:
        await cluster.wait_nodes_report([node], 0, TIMEOUT)
        await asyncio.sleep(1)
        memory = proc.memory()
        figures.append(_rss_figure(0, memory, conditions))
        created = 0
        for count in sizes.footprint_profiles:
            await cluster.create_many(_seccomp_objects(created, count))
            created = count
            await cluster.wait_nodes_report([node], count, TIMEOUT)
            await asyncio.sleep(1)
            figures.append(_rss_figure(count, proc.memory(), conditions))
    finally:
        proc.stop()
        await cluster.api.delete(f"/api/v1/nodes/{node}")
    return figures


def _rss_figure(count: int, memory: dict[str, int], conditions: dict[str, object]) -> Figure:
    target = Target(RSS_TARGETS[count], "MiB") if count in RSS_TARGETS else None
    title = "agent RSS after start (0 profiles)" if not count else f"agent RSS, {count} seccomp profiles installed"
    return Figure(id=f"agent.rss.{count}", title=title, value=memory["VmRSS"] / MIB, unit="MiB",
                  conditions={"profiles": count, **conditions}, target=target,
                  samples={"VmRSS_kib": memory["VmRSS"], "VmHWM_kib": memory["VmHWM"]})


async def _bootstrap_seccomp(cluster: Cluster, sizes: Sizes, base: Path) -> list[Figure]:
    count = sizes.bootstrap_seccomp
    existing = max(sizes.footprint_profiles)
    if count > existing:
        await cluster.create_many(_seccomp_objects(existing, count))
    await _validated(cluster, schema.SECCOMP_PROFILE, count)
    rendered = await _rendered(_seccomp_objects(0, count))
    reference = await asyncio.to_thread(_write_reference, rendered, base / "reference")
    times, syncs = [], []
    for rep in range(sizes.bootstrap_repetitions):
        elapsed, sync = await _boot(cluster, f"bench-boot-sc-{rep}", base / f"boot-{rep}", apparmor=False)
        times.append(elapsed)
        syncs.append(sync)
    summary = summarize(times)
    return [Figure(
        id="bootstrap.seccomp", title=f"node bootstrap, {count} seccomp profiles (agent start -> untainted)",
        value=summary.p50, unit="s", target=Target(BOOT_TARGETS[count], "s") if count in BOOT_TARGETS else None,
        conditions={"profiles": count, "namespaces": NAMESPACES, "repetitions": sizes.bootstrap_repetitions,
                    "agents": "1 process", "value": "median over repetitions",
                    "operator": "running: every profile validated (contentHash published) before the node starts",
                    "clock": "from the fork of python -m secprofiles.agent to the Node without the taint "
                             "(polled every 50 ms)"},
        reference=Reference(f"bare loop: write+fsync+rename+dir fsync of the same {count} files", reference, "s"),
        samples={"boot_s": summary.as_dict(), "agent_full_sync_s": syncs, "reference_s": round(reference, 4)})]


async def _rendered(profile_objects: list[Object]) -> list[tuple[str, str, bytes]]:
    rendered = []
    for obj in profile_objects:
        outcome = await evaluate(obj)
        assert outcome.rendered is not None, outcome.findings
        rendered.append((obj["metadata"]["namespace"], obj["metadata"]["name"], outcome.rendered.content))
    return rendered


def _write_reference(files: list[tuple[str, str, bytes]], root: Path) -> float:
    """Seconds for the bare loop (directories made beforehand, outside the clock)."""
    for namespace in {ns for ns, _, _ in files}:
        (root / namespace).mkdir(parents=True, exist_ok=True)
    dir_fds = {ns: os.open(root / ns, os.O_RDONLY | os.O_DIRECTORY) for ns, _, _ in files}
    try:
        started = time.perf_counter()
        for namespace, name, content in files:
            directory = root / namespace
            temp, final = directory / f".tmp-{name}.json", directory / f"{name}.json"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, final)
            os.fsync(dir_fds[namespace])
        return time.perf_counter() - started
    finally:
        for fd in dir_fds.values():
            os.close(fd)
