"""Benchmark 2: what the pod-binding webhook adds to pod creation, client-observed and server-side.

Three namespaces take pod creates in turn at one fixed total rate (open loop: a create is sent on schedule,
whatever the previous one is doing): ``off`` (the webhook's namespaceSelector does not match, it is never
called), ``nomatch`` (called, no ProfileBinding, pod unchanged) and ``bound`` (called, a ProfileBinding
matches, the pod is mutated to an Installed SeccompProfile). Added latency = percentile(bound) -
percentile(off). Server side: the operator's ``secprofiles_webhook_handler_seconds`` (decision time) and the
API server's ``apiserver_admission_webhook_admission_duration_seconds`` (the whole webhook call, TLS included).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench import objects, processes
from bench.cluster import Cluster
from bench.histogram import Histogram
from bench.report import Figure, Target
from bench.sizes import Sizes
from bench.stats import summarize
from bench.watch import Tracker
from devtools import install
from devtools.commands import REPO
from devtools.ports import free_port
from devtools.processes import Process
from devtools.waiting import wait_for
from secprofiles.kube.client import ApiError
from secprofiles.model import schema
from secprofiles.resources import resource_path

OPERATOR_NS = "secprofiles-system"
CONFIG = "secprofiles"
WEBHOOK_NAME = "bind-pods.secprofiles.io"
VARIANTS = ("off", "nomatch", "bound")
PROFILE = "bench-wh"
ADDED_P99_TARGET_MS = 10.0
HOOK_LABEL = {"secprofiles.io/binding": "enabled"}


def _namespace(variant: str) -> str:
    return f"bench-wh-{variant}"


def _webhook_config(port: int) -> dict[str, Any]:
    """manifests/base/webhook.yaml as shipped, its Service replaced by the operator process on loopback."""
    return install.loopback_webhooks(yaml.safe_load((REPO / "manifests/base/webhook.yaml").read_text()), port)


def _mutated(pod: dict[str, Any]) -> bool:
    return "seccompProfile" in json.dumps(pod.get("spec") or {})


async def _operator_metrics(port: int) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())
    return await asyncio.to_thread(fetch)


async def run(cluster: Cluster, sizes: Sizes, work: Path) -> list[Figure]:
    """Set up operator + webhook + one node, then the timed creates."""
    await cluster.namespace(OPERATOR_NS)
    await cluster.namespace(_namespace("off"))
    for variant in ("nomatch", "bound"):
        await cluster.namespace(_namespace(variant), HOOK_LABEL)
    node = "bench-wh-node"
    await cluster.create(objects.node(node, tainted=False))
    port, metrics_port = free_port(), free_port()
    operator = processes.operator(cluster.kubeconfig, work / "operator.log", metrics_port,
                                  "--webhook-port", str(port), "--webhook-host", "127.0.0.1",
                                  "--cert-dir", str(work / "certs"), "--namespace", OPERATOR_NS,
                                  "--webhook-config-name", CONFIG)
    agent = processes.agent(cluster.kubeconfig, node, work / node, apparmor=False)
    try:
        await cluster.api.create(resource_path("MutatingWebhookConfiguration"), _webhook_config(port))
        operator.start()
        agent.start()
        await _profile_installed(cluster)
        await cluster.create(objects.binding(_namespace("bound"), "bench-wh", PROFILE))
        await _webhook_active(cluster, operator)
        return await _measure(cluster, sizes, metrics_port, operator)
    finally:
        agent.stop()
        operator.stop()
        await cluster.api.delete(resource_path("MutatingWebhookConfiguration", name=CONFIG))
        for variant in VARIANTS:
            await cluster.api.request("DELETE", resource_path("Pod", _namespace(variant)))
        await cluster.api.request("DELETE", resource_path(schema.PROFILE_BINDING, _namespace("bound")))
        await cluster.delete_bench_objects([schema.SECCOMP_PROFILE, "Node"])


async def _profile_installed(cluster: Cluster) -> None:
    tracker = Tracker(cluster.api, resource_path(schema.SECCOMP_PROFILE, _namespace("bound")))
    await tracker.start()
    try:
        await cluster.create(objects.seccomp_profile(_namespace("bound"), PROFILE))
        key = f"{_namespace('bound')}/{PROFILE}"
        await tracker.until(lambda: key in tracker.installed_now, 120, f"{key} Installed")
    finally:
        await tracker.stop()


async def _webhook_active(cluster: Cluster, operator: Process) -> None:
    """Until a probe pod in the bound namespace comes back mutated (the caBundle is injected by then)."""
    counter = iter(range(10_000))

    async def probe() -> bool:
        operator.check()
        try:
            created = await cluster.create(objects.pod(_namespace("bound"), f"probe-{next(counter)}"))
        except ApiError:
            return False
        return _mutated(created)

    await wait_for(probe, 120, "the webhook to mutate a pod in the bound namespace", interval=0.5)


async def _measure(cluster: Cluster, sizes: Sizes, metrics_port: int, operator: Process) -> list[Figure]:
    handler_before = Histogram.parse(await _operator_metrics(metrics_port), "secprofiles_webhook_handler_seconds")
    call_name = "apiserver_admission_webhook_admission_duration_seconds"
    call_before = Histogram.parse(await cluster.apiserver_metric_text(), call_name, {"name": WEBHOOK_NAME})
    latencies: dict[str, list[float]] = {v: [] for v in VARIANTS}
    mutated: dict[str, int] = dict.fromkeys(VARIANTS, 0)
    interval = 1.0 / sizes.webhook_rate

    async def create(variant: str, index: int) -> None:
        started = time.perf_counter()
        pod = await cluster.create(objects.pod(_namespace(variant), f"pod-{index:05d}"))
        latencies[variant].append(time.perf_counter() - started)
        mutated[variant] += _mutated(pod)

    total = sizes.webhook_creates * len(VARIANTS)
    tasks = []
    begin = time.perf_counter()
    for index in range(total):
        await asyncio.sleep(max(0.0, begin + index * interval - time.perf_counter()))
        tasks.append(asyncio.create_task(create(VARIANTS[index % len(VARIANTS)], index)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - begin
    operator.check()
    handler = Histogram.parse(await _operator_metrics(metrics_port),
                              "secprofiles_webhook_handler_seconds").minus(handler_before)
    call = Histogram.parse(await cluster.apiserver_metric_text(), call_name, {"name": WEBHOOK_NAME}).minus(call_before)
    if mutated["bound"] != sizes.webhook_creates or mutated["off"] or mutated["nomatch"]:
        raise RuntimeError(f"unexpected mutations per variant: {mutated}")
    return _figures(sizes, latencies, handler, call, elapsed)


def _figures(sizes: Sizes, latencies: dict[str, list[float]], handler: Histogram, call: Histogram,
             elapsed: float) -> list[Figure]:
    summaries = {v: summarize([x * 1000 for x in latencies[v]]) for v in VARIANTS}
    conditions = {"creates": f"{sizes.webhook_creates} per variant", "rate": f"{sizes.webhook_rate:g}/s total",
                  "variants": "off (webhook not called), nomatch (called, pod unchanged), bound (called, mutated)",
                  "schedule": "open loop, variants interleaved round-robin", "nodes": 1,
                  "achieved_rate_per_s": round(len(VARIANTS) * sizes.webhook_creates / elapsed, 1),
                  "operator": "1 process, --standalone, serving the webhook over TLS on 127.0.0.1",
                  "webhook_config": "manifests/base/webhook.yaml (failurePolicy Ignore, timeoutSeconds 3)"}
    samples = {f"{v}_ms": s.as_dict(3) for v, s in summaries.items()}
    server = {"handler_calls": int(handler.count), "handler_mean_ms": round(handler.mean * 1000, 4),
              "handler_p99_bucket_upper_ms": handler.quantile_bound(0.99) * 1000,
              "apiserver_webhook_calls": int(call.count), "apiserver_webhook_call_mean_ms": round(call.mean * 1000, 3),
              "apiserver_webhook_call_p99_bucket_upper_ms": call.quantile_bound(0.99) * 1000}
    off, bound, nomatch = summaries["off"], summaries["bound"], summaries["nomatch"]
    return [
        Figure(id="webhook.added.p50", title="webhook: pod create added latency, p50", value=bound.p50 - off.p50,
               unit="ms", conditions=conditions, samples={**samples, **server},
               notes=[f"bound p50 {bound.p50:.2f} ms - off p50 {off.p50:.2f} ms"]),
        Figure(id="webhook.added.p99", title="webhook: pod create added latency, p99", value=bound.p99 - off.p99,
               unit="ms", conditions=conditions, target=Target(ADDED_P99_TARGET_MS, "ms"),
               notes=[f"bound p99 {bound.p99:.2f} ms - off p99 {off.p99:.2f} ms"]),
        Figure(id="webhook.added_nomatch.p99", title="webhook: added latency, called but no binding, p99",
               value=nomatch.p99 - off.p99, unit="ms", conditions=conditions),
        Figure(id="webhook.create_off.p99", title="pod create without the webhook, p99 (baseline)",
               value=off.p99, unit="ms", conditions=conditions),
        Figure(id="webhook.handler.mean", title="webhook: server-side decision time, mean",
               value=handler.mean * 1000, unit="ms", conditions={**conditions, "calls": int(handler.count)},
               notes=["operator histogram secprofiles_webhook_handler_seconds"]),
        Figure(id="webhook.call.mean", title="webhook: API server's call to it (TLS+handler), mean",
               value=call.mean * 1000, unit="ms", conditions={**conditions, "calls": int(call.count)},
               notes=["apiserver_admission_webhook_admission_duration_seconds; p99 only as a bucket bound "
                      f"(<= {call.quantile_bound(0.99) * 1000:g} ms)"]),
    ]
