"""The convergence logic of one node, with an in-memory API and a temporary host root (no cluster).

AppArmor kernel loading is SIMULATED here (RecordingLoader): this kernel has no AppArmor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from secprofiles.agent.agent import Agent, Config
from secprofiles.agent.apparmor_loader import SECURITYFS, RecordingLoader, read_profiles_file
from secprofiles.model import nodereport
from secprofiles.model.evaluate import evaluate
from tests.conftest import needs_apparmor_parser
from tests.reports import bucket_holds, expected_buckets, failure
from tests.unit.agent.fakes import FakeApi

NPS = "/apis/secprofiles.io/v1alpha1/nodeprofilestatuses/node-a"
NODE = "/api/v1/nodes/node-a"


def sp(name: str, namespace: str = "apps", **spec: Any) -> dict[str, Any]:
    body = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}], **spec}
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def aa(name: str, mode: str = "enforce") -> dict[str, Any]:
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "AppArmorProfile", "metadata": {"name": name},
            "spec": {"mode": mode, "rules": {"filesystem": {"readOnlyPaths": ["/etc/**"]}}}}


def make_agent(tmp_path: Path, apparmor: bool = False) -> tuple[Agent, FakeApi, Path]:
    host = tmp_path / "host"
    host.mkdir(exist_ok=True)
    if apparmor:
        (host / SECURITYFS).mkdir(parents=True, exist_ok=True)
        (host / SECURITYFS / "profiles").touch()
    api = FakeApi()
    api.add_node("node-a", taints=[{"key": nodereport.NOT_READY_TAINT, "effect": "NoSchedule"}])
    config = Config("node-a", host, "/var/lib/kubelet", tmp_path / "state")
    agent = Agent(api, config, RecordingLoader(host))  # type: ignore[arg-type]
    return agent, api, host / "var/lib/kubelet/seccomp/secprofiles"


async def feed(agent: Agent, event: str, obj: dict[str, Any]) -> None:
    await agent._on_event(obj["kind"])(event, obj)


async def start(agent: Agent, *objs: dict[str, Any]) -> None:
    await agent.prepare()
    for obj in objs:
        await feed(agent, "ADDED", obj)
    await agent.full_sync()


def status(api: FakeApi) -> dict[str, Any]:
    return api.objects[NPS]["status"]


async def processed(agent: Agent) -> dict[str, str]:
    """What the node should have processed: every desired profile with a valid rendering (the model's, not the
    agent's bookkeeping)."""
    found = {}
    for key in agent.desired:
        obj = agent.desired.get(key)
        assert obj is not None
        rendered = (await evaluate(obj, agent.desired.lookup)).rendered
        if rendered is not None:
            found[key] = rendered.content_hash
    return found


async def test_full_sync_writes_every_profile_reports_once_then_removes_the_taint(tmp_path: Path) -> None:
    agent, api, root = make_agent(tmp_path)
    objs = [sp(f"p{i}") for i in range(50)]
    await start(agent, *objs)
    expected = (await evaluate(objs[0])).rendered
    assert expected is not None
    assert (root / "apps/p0.json").read_bytes() == expected.content
    assert len(list((root / "apps").iterdir())) == 50
    hashes = {f"seccomp/apps/p{i}": (await evaluate(obj)).rendered.content_hash for i, obj in enumerate(objs)}  # type: ignore[union-attr]
    assert status(api)["buckets"] == expected_buckets(hashes)
    assert not status(api).get("failures")
    assert status(api)["summary"] == {"installed": 50, "failed": 0}
    assert status(api)["ready"] is True and status(api)["lastFullSync"]
    assert api.objects[NODE]["spec"]["taints"] == []
    assert agent.ready
    # Creation, then: facts, the 50 profiles' digests in one patch, ready. Never one per profile.
    assert len(api.status_patches()) == 3
    writes = [w for w in api.writes if w[1] in (NODE, NPS + "/status")]
    taint_at = next(i for i, w in enumerate(writes) if w[1] == NODE)
    entries_at = next(i for i, w in enumerate(writes) if "buckets" in w[2].get("status", {}))
    assert entries_at < taint_at  # files and their report come before the node is opened up


async def test_stale_files_are_removed_and_unchanged_files_are_not_rewritten(tmp_path: Path) -> None:
    agent, api, root = make_agent(tmp_path)
    await start(agent, sp("keep"))
    keep = root / "apps/keep.json"
    inode = keep.stat().st_ino
    (root / "old").mkdir()
    (root / "old/stale.json").write_text("{}")
    (root / "apps/.tmp-keep.json.dead").write_text("{")
    again, api2, _ = make_agent(tmp_path)
    api2.objects = api.objects
    await start(again, sp("keep"))
    assert sorted(p.name for p in root.rglob("*")) == ["apps", "keep.json"]
    assert keep.stat().st_ino == inode  # same bytes: left in place


async def test_invalid_profiles_are_reported_and_never_written(tmp_path: Path) -> None:
    agent, api, root = make_agent(tmp_path)
    bad = sp("bad", syscalls=[{"names": ["not_a_syscall"], "action": "SCMP_ACT_ERRNO"}])
    await start(agent, bad, sp("good"))
    entry = failure(status(api), "seccomp/apps/bad")
    assert entry is not None and "not_a_syscall" in entry["message"] and entry["contentHash"] == ""
    good = (await evaluate(sp("good"))).rendered
    assert good is not None and status(api)["buckets"] == expected_buckets({"seccomp/apps/good": good.content_hash})
    assert not (root / "apps/bad.json").exists()
    assert agent.ready  # an invalid profile does not hold the node back


async def test_a_changed_base_rerenders_its_dependents_and_deletion_removes_files(tmp_path: Path) -> None:
    agent, api, root = make_agent(tmp_path)
    await start(agent, sp("base"), sp("child", baseProfileName="base", syscalls=[]),
                sp("bundled-child", baseProfileName="bundled/prevent-chmod", syscalls=[]))
    assert b"fchmodat" in (root / "apps/child.json").read_bytes()
    assert b"fchmodat" in (root / "apps/bundled-child.json").read_bytes()
    await feed(agent, "MODIFIED", sp("base", syscalls=[{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]))
    await agent.drain()
    child = (root / "apps/child.json").read_bytes()
    assert b"mkdir" in child and b"fchmodat" not in child
    new_base = sp("base", syscalls=[{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}])["spec"]
    rendered = (await evaluate(sp("child", baseProfileName="base", syscalls=[]),
                                        lambda ns, n: new_base)).rendered
    assert rendered is not None and rendered.content == child
    assert bucket_holds(status(api), await processed(agent), "seccomp/apps/child")
    assert (await processed(agent))["seccomp/apps/child"] == rendered.content_hash

    await feed(agent, "DELETED", sp("base"))
    await agent.drain()
    assert not (root / "apps/base.json").exists()
    # The dependent lost its base: Error, and the last good file stays for pods already using it.
    entry = failure(status(api), "seccomp/apps/child")
    assert entry is not None and entry["contentHash"] == "" and "not found" in entry["message"]
    assert (root / "apps/child.json").read_bytes() == child
    assert status(api)["buckets"] == expected_buckets(await processed(agent))
    assert set(await processed(agent)) == {"seccomp/apps/bundled-child"}


async def test_without_apparmor_the_profile_is_an_error_and_seccomp_still_installs(tmp_path: Path) -> None:
    agent, api, root = make_agent(tmp_path, apparmor=False)
    await start(agent, aa("demo"), sp("p"))
    # Processed (in the digest) but failed; not listed: appArmorEnabled false says it for every AppArmor profile.
    assert status(api)["buckets"] == expected_buckets(await processed(agent))
    assert set(await processed(agent)) == {"apparmor/demo", "seccomp/apps/p"}
    assert not status(api).get("failures")
    assert status(api)["appArmorEnabled"] is False
    assert status(api)["summary"] == {"installed": 1, "failed": 1}


@needs_apparmor_parser
async def test_simulated_apparmor_loads_unloads_and_never_replaces_a_foreign_profile(tmp_path: Path) -> None:
    agent, api, _ = make_agent(tmp_path, apparmor=True)
    kernel = tmp_path / "host" / SECURITYFS / "profiles"
    kernel.write_text("someone-else (enforce)\n")
    foreign = aa("someone-else")
    await start(agent, aa("demo", mode="complain"), foreign)
    assert read_profiles_file(kernel) == {"demo": "complain", "someone-else": "enforce"}
    assert failure(status(api), "apparmor/demo") is None
    assert status(api)["buckets"] == expected_buckets(await processed(agent))
    refused = failure(status(api), "apparmor/someone-else")
    assert refused is not None and "not loaded by secprofiles" in refused["message"]
    assert (tmp_path / "state/apparmor/demo.apparmor").exists()

    await feed(agent, "DELETED", aa("demo"))
    await feed(agent, "DELETED", foreign)
    await agent.drain()
    assert read_profiles_file(kernel) == {"someone-else": "enforce"}  # the foreign one stays loaded
    assert not (tmp_path / "state/apparmor/demo.apparmor").exists()


@needs_apparmor_parser
async def test_a_restart_reloads_every_apparmor_profile_and_unloads_removed_ones(tmp_path: Path) -> None:
    agent, api, _ = make_agent(tmp_path, apparmor=True)
    await start(agent, aa("demo"), aa("gone"))
    kernel = tmp_path / "host" / SECURITYFS / "profiles"
    kernel.write_text("")  # a reboot: kernel state is lost, the state directory is not
    again, api2, _ = make_agent(tmp_path, apparmor=True)
    api2.objects = api.objects
    await start(again, aa("demo"))
    assert read_profiles_file(kernel) == {"demo": "enforce"}
    assert set(await processed(again)) == {"apparmor/demo"}
    assert status(api2)["buckets"] == expected_buckets(await processed(again))
    assert not (tmp_path / "state/apparmor/gone.apparmor").exists()
