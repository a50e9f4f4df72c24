"""The real local control plane for a benchmark run, and the API calls the benchmarks make as admin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.objects import BENCH_LABEL
from devtools.build import ensure_binary
from devtools.cluster import DevCluster
from devtools.commands import REPO
from devtools.objects import ensure_namespace, install_crds
from devtools.waiting import wait_for
from secprofiles.kube.client import ApiError, Credentials, KubeApi
from secprofiles.model import schema
from secprofiles.objects import Object
from secprofiles.resources import resource_path

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "APPLY", "DELETECOLLECTION"})


class Cluster:
    """A started DevCluster with the CRDs installed and an admin API client (``api``)."""

    def __init__(self, run_dir: Path, crds: Path = REPO / "crds") -> None:
        self.run_dir, self.crds = run_dir, crds
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
        self.dev.start()  # on the main thread: its processes die with the thread that starts them
        self._api = KubeApi(Credentials.from_kubeconfig(self.dev.kubeconfig), user_agent="secprofiles-bench")
        await install_crds(self.api, self.crds)

    async def stop(self) -> None:
        """Close the client and stop the control plane."""
        if self._api is not None:
            await self._api.close()
        self.dev.stop()

    # ---------------------------------------------------------------- objects

    async def namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """Create a namespace (if missing) with ``labels`` and wait for its default service account."""
        await ensure_namespace(self.api, name, labels)

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
            try:
                reports = await self.ready_reports(nodes)
            except TimeoutError:
                # The one-entry-per-profile design's reports are ~750 KiB each at 5,000 profiles: on a loaded
                # machine a listing can outlast the client's timeout. That is the design's cost, not an answer.
                return False
            counts = [int(((r.get("status") or {}).get("summary") or {}).get("installed") or 0)
                      for r in reports.values()]
            return len(reports) == len(nodes) and min(counts, default=0) >= installed

        await wait_for(check, within, f"{len(nodes)} node(s) ready with {installed} profile(s) Installed",
                       interval=0.25)

    # ---------------------------------------------------------------- metrics

    async def apiserver_writes(self) -> dict[str, float]:
        """``apiserver_request_total`` of write verbs, summed per ``VERB resource[/subresource]``."""
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(await self.api.get_text("/metrics")):
            for sample in family.samples:
                labels = sample.labels
                if sample.name != "apiserver_request_total" or labels.get("verb") not in WRITE_VERBS:
                    continue
                resource = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource")
                                                         else "")
                key = f"{labels['verb']} {resource}"
                counts[key] = counts.get(key, 0.0) + sample.value
        return counts

    async def apiserver_bytes(self) -> dict[str, float]:
        """Bytes the API server received in request bodies (``request VERB resource[/subresource]``) and sent in
        watch events (``watch group/resource``), from its own histograms' sums."""
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(await self.api.get_text("/metrics")):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "apiserver_request_body_size_bytes_sum":
                    key = f"request {labels.get('verb', '')} {labels.get('resource', '')}"
                elif sample.name == "apiserver_watch_events_sizes_sum":
                    key = f"watch {labels.get('group', '')}/{labels.get('resource') or labels.get('kind', '')}"
                else:
                    continue
                totals[key] = totals.get(key, 0.0) + sample.value
        return totals

    async def apiserver_metric_text(self) -> str:
        """The kube-apiserver's /metrics text."""
        return await self.api.get_text("/metrics")


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    """Counter increase per key (keys that did not change are left out)."""
    return {k: int(v - before.get(k, 0.0)) for k, v in sorted(after.items()) if v - before.get(k, 0.0) > 0}
