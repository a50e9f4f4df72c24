"""The injection table (tests/hostile.py) against the real API server, the operator and two node agents.

Cases the API server refuses: refused on create, the message names the field, nothing stored. Cases it stores:
the operator's status is Error naming the field and the reason, both agents (one with simulated AppArmor, see
test_agent.py) report Error for them, and no node writes a seccomp file, keeps AppArmor text or loads a profile,
while valid control profiles created alongside are installed (the nodes were working).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster import DevCluster
from devtools.objects import create_if_missing, delete_everything, ensure_namespace
from devtools.waiting import wait_for
from secprofiles.agent.apparmor_loader import read_profiles_file
from secprofiles.kube.client import ApiError, KubeApi
from secprofiles.model import keys, schema
from secprofiles.resources import resource_path
from tests.hostile import INJECTIONS, Injection, apparmor, seccomp
from tests.integration.kube import cluster_renderings, open_api
from tests.integration.processes import SECURITYFS, AgentProcess, OperatorProcess
from tests.reports import bucket_holds, failure

pytestmark = pytest.mark.controlplane
NS = "inject"
API_REFUSED = [c for c in INJECTIONS if c.api]
MODEL_REFUSED = [c for c in INJECTIONS if not c.api]


@pytest.fixture(scope="module")
async def api(cluster: DevCluster) -> AsyncIterator[KubeApi]:
    async with open_api(cluster.kubeconfig) as client:
        await ensure_namespace(client, NS)
        yield client


def path_of(case: Injection) -> str:
    return resource_path(case.kind, NS if schema.is_namespaced(case.kind) else None)


@pytest.mark.parametrize("case", API_REFUSED, ids=[c.id for c in API_REFUSED])
async def test_the_api_server_refuses_naming_the_field(api: KubeApi, case: Injection) -> None:
    with pytest.raises(ApiError) as refused:
        await api.create(path_of(case), case.obj)
    message = refused.value.message
    assert refused.value.status in (400, 422), message
    if case.field == "metadata.namespace":  # posted to namespace "inject": the API server compares the two
        assert "namespace of the provided object does not match" in message
    else:
        assert case.field in message and case.words in message, message
    listing = await api.request("GET", path_of(case))
    assert [i["metadata"]["name"] for i in listing["items"] if i["metadata"]["name"] == case.obj["metadata"]["name"]] \
        == []


@pytest.fixture
def nodes(cluster: DevCluster, agent_kubeconfig: Path, tmp_path: Path) -> Iterator[list[AgentProcess]]:
    made = []
    for apparmor_node in (False, True):
        node = f"inject-{'apparmor' if apparmor_node else 'seccomp'}"
        cluster.admin.call(create_if_missing, resource_path("Node"), {"metadata": {"name": node}})
        made.append(AgentProcess(agent_kubeconfig, node, tmp_path / node, apparmor_node).start())
    yield made
    for agent in made:
        agent.stop()
        cluster.admin.delete(resource_path("Node", name=agent.node))


@pytest.fixture
def operator(cluster: DevCluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(cluster.kubeconfig, tmp_path / "operator.log")
    process.start()
    yield process
    process.stop()


def key_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    if obj["kind"] == schema.SECCOMP_PROFILE:
        return keys.seccomp_key(NS, meta["name"])
    return keys.apparmor_key(meta["name"])


async def test_model_refusals_never_reach_a_node(
        api: KubeApi, nodes: list[AgentProcess], operator: OperatorProcess,
        report_figure: Callable[[str], None]) -> None:
    controls = [seccomp("control"), apparmor("inject-control")]
    try:
        for obj in [c.obj for c in MODEL_REFUSED] + controls:
            await api.create(resource_path(obj["kind"], NS if schema.is_namespaced(obj["kind"]) else None), obj)

        async def status(obj: dict[str, Any]) -> dict[str, Any]:
            namespace = NS if schema.is_namespaced(obj["kind"]) else None
            found = await api.get(resource_path(obj["kind"], namespace, obj["metadata"]["name"]))
            return (found or {}).get("status") or {}

        for case in MODEL_REFUSED:
            async def refused(case: Injection = case) -> dict[str, Any] | None:
                current = await status(case.obj)
                return current if current.get("phase") == "Error" else None

            current = await wait_for(refused, within=60, what=f"operator status Error for {case.id}")
            message = current["conditions"][0]["message"]
            assert f"{case.field}: " in message and case.words in message, (case.id, message)
            assert not current.get("contentHash") and not current.get("localhostProfile")

        async def reported(agent: AgentProcess) -> dict[str, Any] | None:
            """The node's report once it judged every refused case invalid and has the controls."""
            found = await api.get(resource_path("NodeProfileStatus", name=agent.node))
            status = (found or {}).get("status") or {}
            processed = await cluster_renderings(api)
            refused_here = all((failure(status, key_of(c.obj)) or {}).get("contentHash") == "" for c in MODEL_REFUSED)
            controls_in = all(bucket_holds(status, processed, key_of(o)) for o in controls)
            return status if refused_here and controls_in else None

        for agent in nodes:
            await wait_for(lambda agent=agent: reported(agent), within=90,
                           what=f"{agent.node} reports every refused case invalid and the controls processed")
            written = sorted(p.name for p in (agent.seccomp_root / NS).iterdir())
            assert written == ["control.json"], written
        apparmor_node = nodes[1]
        refused_names = {c.obj["metadata"]["name"] for c in MODEL_REFUSED if c.kind == schema.APPARMOR_PROFILE}
        loaded = set(read_profiles_file(apparmor_node.host_root / SECURITYFS / "profiles"))
        assert "inject-control" in loaded and not loaded & refused_names, loaded
        kept = {p.name.removesuffix(".apparmor") for p in (apparmor_node.state_dir / "apparmor").iterdir()}
        assert "inject-control" in kept and not kept & refused_names, kept
        report_figure(f"{len(MODEL_REFUSED)} model-refused injections stored by the API server: operator status "
                      f"Error naming the field for each, 2 agents report Error, 0 node files, 0 AppArmor loads")
    finally:
        for kind in (schema.SECCOMP_PROFILE, schema.APPARMOR_PROFILE):
            await delete_everything(api, kind)
