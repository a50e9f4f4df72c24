"""The real local control plane for a benchmark run, and the API calls the benchmarks make as admin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.objects import BENCH_LABEL, Object
from bench.processes import REPO
from secprofiles import schema
from secprofiles.devcluster import DevCluster, ensure_binary
from secprofiles.kubeapi import ApiError, Credentials, KubeApi, resource_path

T = TypeVar("T")
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "APPLY", "DELETECOLLECTION"})


async def wait_for(probe: Callable[[], Awaitable[T | None]], within: float, what: str,
                   interval: float = 0.1) -> T:
    """Call ``probe`` until it returns something truthy; TimeoutError naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {within:.0f}s waiting for {what}; last seen: {str(last)[:300]}")


class Cluster:
    """A started DevCluster with the CRDs installed and an admin API client (``api``)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.dev = DevCluster(run_dir / "cluster", binary=ensure_binary(), quiet=True)
        self._api: KubeApi | None = None

    @property
    def api(self) -> KubeApi:
        """The admin client (after :meth:`start`)."""
        assert self._api is not None, "cluster not started"
        return self._api

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (the operator and agents use it too: RBAC is not what is measured)."""
        return self.dev.kubeconfig

    async def start(self) -> None:
        """Start etcd + kube-apiserver + kube-controller-manager and install the CRDs."""
        await asyncio.to_thread(self.dev.start)
        self._api = KubeApi(Credentials.from_kubeconfig(self.dev.kubeconfig), user_agent="secprofiles-bench")
        for path in sorted((REPO / "crds").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            name = crd["metadata"]["name"]
            await self.api.patch(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}", crd, "apply",
                                 params={"fieldManager": "secprofiles-bench", "force": "true"})
            await wait_for(partial(self._established, name), 30, f"CRD {name} Established")
        for kind in (schema.SECCOMP_PROFILE, schema.APPARMOR_PROFILE, schema.NODE_PROFILE_STATUS):
            await wait_for(partial(self._served, kind), 30, f"{kind} served")

    async def _established(self, name: str) -> bool:
        crd = await self.api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") or {}
        return any(c["type"] == "Established" and c["status"] == "True"
                   for c in (crd.get("status") or {}).get("conditions") or [])

    async def _served(self, kind: str) -> bool:
        try:
            await self.api.request("GET", resource_path(kind), params={"limit": "1"})
        except ApiError:
            return False
        return True

    async def stop(self) -> None:
        """Close the client and stop the control plane."""
        if self._api is not None:
            await self._api.close()
        await asyncio.to_thread(self.dev.stop)

    # ---------------------------------------------------------------- objects

    async def namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """Create a namespace (if missing) with ``labels`` and wait for its default service account."""
        try:
            await self.api.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": labels or {}}})
        except ApiError as error:
            if error.status != 409:
                raise
        await wait_for(lambda: self.api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"), 60,
                       f"default service account in {name}")

    async def create(self, obj: Object) -> Object:
        """Create one object."""
        meta = obj["metadata"]
        return await self.api.create(resource_path(obj["kind"], meta.get("namespace")), obj)

    async def create_many(self, objects: Sequence[Object], concurrency: int = 16) -> float:
        """Create objects with at most ``concurrency`` requests in flight; returns the seconds it took."""
        semaphore = asyncio.Semaphore(concurrency)

        async def one(obj: Object) -> None:
            async with semaphore:
                await self.create(obj)

        started = time.perf_counter()
        await asyncio.gather(*(one(obj) for obj in objects))
        return time.perf_counter() - started

    async def delete_bench_objects(self, kinds: Iterable[str]) -> None:
        """Delete every object of ``kinds`` carrying the bench label, finalizers dropped, and wait until gone."""
        selector = {"labelSelector": BENCH_LABEL}
        limit = asyncio.Semaphore(16)
        for kind in kinds:
            items = (await self.api.request("GET", resource_path(kind), params=selector)).get("items") or []
            async def drop(item: Object, kind: str = kind, semaphore: asyncio.Semaphore = limit) -> None:
                meta = item["metadata"]
                path = resource_path(kind, meta.get("namespace"), meta["name"])
                async with semaphore:
                    await self.api.delete(path)
                    if kind != "Node":  # profiles: the operator may be gone
                        try:
                            await self.api.patch(path, {"metadata": {"finalizers": None}})
                        except ApiError as error:
                            if error.status != 404:
                                raise

            await asyncio.gather(*(drop(item) for item in items))

            async def gone(kind: str = kind) -> bool:
                listing = await self.api.request("GET", resource_path(kind), params={**selector, "limit": "1"})
                return not listing.get("items")

            await wait_for(gone, 120, f"bench {kind} objects deleted", interval=0.5)

    async def node_tainted(self, name: str, taint_key: str) -> bool:
        """Whether the Node still carries ``taint_key``."""
        node = await self.api.get(resource_path("Node", name=name)) or {}
        return any(t.get("key") == taint_key for t in (node.get("spec") or {}).get("taints") or [])

    async def ready_reports(self, nodes: Iterable[str]) -> dict[str, Object]:
        """The NodeProfileStatus of each of ``nodes`` whose agent reports ``ready``."""
        wanted = set(nodes)
        listing = await self.api.request("GET", resource_path(schema.NODE_PROFILE_STATUS))
        return {item["metadata"]["name"]: item for item in listing.get("items") or []
                if item["metadata"]["name"] in wanted and (item.get("status") or {}).get("ready")}

    async def wait_nodes_report(self, nodes: Sequence[str], installed: int, within: float) -> None:
        """Wait until every node's agent is ready and reports at least ``installed`` profiles Installed."""
        async def check() -> bool:
            reports = await self.ready_reports(nodes)
            counts = [int(((r.get("status") or {}).get("summary") or {}).get("installed") or 0)
                      for r in reports.values()]
            return len(reports) == len(nodes) and min(counts, default=0) >= installed

        await wait_for(check, within, f"{len(nodes)} node(s) ready with {installed} profile(s) Installed",
                       interval=0.25)

    # ---------------------------------------------------------------- metrics

    async def apiserver_writes(self) -> dict[str, float]:
        """``apiserver_request_total`` of write verbs, summed per ``VERB resource[/subresource]``."""
        status, raw = await asyncio.to_thread(self.dev.request, "GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"kube-apiserver /metrics answered {status}")
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(raw.decode()):
            for sample in family.samples:
                labels = sample.labels
                if sample.name != "apiserver_request_total" or labels.get("verb") not in WRITE_VERBS:
                    continue
                resource = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource")
                                                         else "")
                key = f"{labels['verb']} {resource}"
                counts[key] = counts.get(key, 0.0) + sample.value
        return counts

    async def apiserver_metric_text(self) -> str:
        """The kube-apiserver's /metrics text."""
        status, raw = await asyncio.to_thread(self.dev.request, "GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"kube-apiserver /metrics answered {status}")
        return raw.decode()


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    """Counter increase per key (keys that did not change are left out)."""
    return {k: int(v - before.get(k, 0.0)) for k, v in sorted(after.items()) if v - before.get(k, 0.0) > 0}
