"""The real node's pure parts: the host-state comparison and clean-up choices, containerd's and the kubelet's
configuration, the guard rules, the install overlay (rendered by kustomize when installed), the base image's key."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from devtools import hoststate, images, realcluster
from devtools.clusterpki import ClusterPki
from devtools.containerd import SOCKET_DIR, Layout, Network, cni_conflist, config_toml
from devtools.install import kustomize_command
from devtools.realnode import NOT_READY_TAINT, NodeFiles, guard_rules, kube_proxy_config, kubelet_config
from tests.conftest import missing_install

NETWORK = Network("192.0.2.2")

IPTABLES_NAT = """\
-P PREROUTING ACCEPT
-N KUBE-SERVICES
-N KUBE-SVC-NPX46M4PTMTKRN6Y
-N DOCKER
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j DOCKER
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A INPUT -d 192.0.2.2/32 -p tcp -m comment --comment secprofiles-realnode -j DROP
-A INPUT -p tcp -m comment --comment "someone else" -j DROP
"""


def test_iptables_deletions_take_only_the_nodes_rules_and_chains() -> None:
    deletions = hoststate.iptables_deletions(IPTABLES_NAT)
    assert ["-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j",
            "KUBE-SERVICES"] in deletions
    assert ["-D", "INPUT", "-d", "192.0.2.2/32", "-p", "tcp", "-m", "comment", "--comment", "secprofiles-realnode",
            "-j", "DROP"] in deletions
    assert not any("DOCKER" in d or "someone else" in d for d in deletions)
    # rules first, then flush, then delete the chains
    assert deletions[-4:] == [["-F", "KUBE-SERVICES"], ["-F", "KUBE-SVC-NPX46M4PTMTKRN6Y"],
                              ["-X", "KUBE-SERVICES"], ["-X", "KUBE-SVC-NPX46M4PTMTKRN6Y"]]


def test_differences_say_whose_they_are() -> None:
    before = {"links": ["eth0:", "podman0:"], "sysctl": ["net.ipv4.ip_forward = 0"], "routes": ["default via x"]}
    after = {"links": ["eth0:", "secprofiles0:", "cni-podman1:"], "sysctl": ["net.ipv4.ip_forward = 1"],
             "routes": ["default via x"]}
    found = {d.section: d for d in hoststate.differences(before, after, hoststate.ours_pattern(Path("/d"),
                                                                                              "secprofiles0"))}
    assert set(found) == {"links", "sysctl"}
    assert found["links"].ours and found["links"].added == ("cni-podman1:", "secprofiles0:")
    assert found["sysctl"].ours  # nothing else changes sysctls while the node runs
    other = hoststate.differences(before, {**before, "links": ["eth0:", "cni-podman1:"]},
                                  hoststate.ours_pattern(Path("/d"), "secprofiles0"))
    assert [d.ours for d in other] == [False]  # another developer's podman network


def test_sysctls_restored_and_system_paths_removed_only_as_they_were() -> None:
    before = ["kernel.panic = 1", "vm.overcommit_memory = 0", "net.ipv4.ip_forward = 0"]
    now = {"kernel.panic": "10", "vm.overcommit_memory": "0", "net.ipv4.ip_forward": "1"}
    assert hoststate.sysctl_restores(before, now) == {"kernel.panic": "1", "net.ipv4.ip_forward": "0"}
    assert hoststate.absent_before(["/run/containerd absent", "/var/lib/cni present"]) == {"/run/containerd"}


def test_nft_tables_made_by_iptables_nft_are_removed_only_when_new_and_empty() -> None:
    ruleset = ("table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n"
               "\t}\n}\ntable ip nat {\n\tchain X {\n\t\tip daddr 10.0.0.1 counter drop\n\t}\n}\n"
               "table inet podman {\n}\n")
    tables = hoststate.nft_tables(ruleset)
    assert tables == ["table inet podman empty", "table ip filter empty", "table ip nat rules"]
    assert hoststate.new_empty_nft_tables(["table inet podman empty"], tables) == [("ip", "filter")]


def test_containerd_config_is_private_to_the_cluster_directory(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "containerd")
    text = config_toml(layout, images.PAUSE_IMAGE)
    paths = re.findall(r'^\s*(?:root|state|path|Root|conf_dir) = "([^"]+)"', text, re.M)
    assert len(paths) == 5 and all(p.startswith(str(layout.base)) for p in paths)
    # the socket in a short fixed place (unix socket paths are limited; one real node per machine)
    assert re.findall(r'^\s*address = "([^"]+)"', text, re.M) == [str(SOCKET_DIR / "containerd.sock")]
    assert "restrict_oom_score_adj = true" in text  # root without CAP_SYS_RESOURCE
    assert f'sandbox_image = "{images.PAUSE_IMAGE}"' in text
    assert "SystemdCgroup = false" in text


def test_pod_network_cannot_leave_the_machine(tmp_path: Path) -> None:
    conf = json.loads(cni_conflist(Layout(tmp_path), NETWORK))
    bridge = conf["plugins"][0]
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["routes"] == [{"dst": "10.96.0.0/24"}, {"dst": "192.0.2.2/32"}]  # no default route
    assert bridge["ipam"]["dataDir"].startswith(str(tmp_path))
    rules = [" ".join(rule) for rule in guard_rules(NETWORK, 6443)]
    assert any("-i secprofiles0 ! -o secprofiles0" in r and r.endswith("-j DROP") for r in rules)
    assert any("! -i secprofiles0 -o secprofiles0" in r for r in rules)
    assert any("--dports 6443,10250" in r and "! --src-type LOCAL ! -s 10.244.0.0/24" in r for r in rules)
    assert all(hoststate.RULE_COMMENT in r for r in rules)


def test_kubelet_and_kube_proxy_configuration(tmp_path: Path) -> None:
    pki = ClusterPki(tmp_path / "pki", None)  # type: ignore[arg-type]  # paths only
    config = kubelet_config(NodeFiles(tmp_path), pki, Layout(tmp_path / "containerd"), "192.0.2.2")
    assert config["registerWithTaints"] == [NOT_READY_TAINT]
    assert config["authentication"]["anonymous"] == {"enabled": False} and config["readOnlyPort"] == 0
    assert (config["cgroupDriver"], config["failSwapOn"], config["address"]) == ("cgroupfs", False, "192.0.2.2")
    assert config["podLogsDir"].startswith(str(tmp_path))
    proxy = kube_proxy_config(tmp_path / "k", "realnode", NETWORK)
    assert proxy["mode"] == "iptables" and proxy["iptables"]["localhostNodePorts"] is False
    assert proxy["conntrack"]["maxPerCore"] == 0


def test_product_pods_ready_needs_two_operators_and_the_agent() -> None:
    def pod(name: str, ready: bool, deleting: bool = False) -> dict[str, object]:
        meta: dict[str, object] = {"labels": {"app.kubernetes.io/name": name}}
        if deleting:
            meta["deletionTimestamp"] = "now"
        return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": str(ready)}]}}

    operator, agent = realcluster.OPERATOR, realcluster.AGENT
    assert realcluster.product_pods_ready([pod(operator, True), pod(operator, True), pod(agent, True)])
    assert not realcluster.product_pods_ready([pod(operator, True), pod(operator, False), pod(agent, True)])
    assert not realcluster.product_pods_ready([pod(operator, True), pod(agent, True)])
    assert not realcluster.product_pods_ready([pod(operator, True), pod(operator, True, deleting=True),
                                               pod(agent, True)])


def test_install_overlay_sets_images_kubelet_root_and_state(tmp_path: Path) -> None:
    command = kustomize_command()
    if command is None:
        pytest.skip(missing_install("kubectl or kustomize (scripts/install.sh)"))
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    kubelet_root, state = tmp_path / "kubelet", tmp_path / "agent-state"
    (overlay / "kustomization.yaml").write_text(realcluster.install_overlay(kubelet_root, state, overlay))
    rendered = subprocess.run([*command, str(overlay)], capture_output=True, text=True, check=True).stdout
    objects = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(rendered) if o}
    agent = objects[("DaemonSet", "secprofiles-agent")]["spec"]["template"]["spec"]
    operator = objects[("Deployment", "secprofiles-operator")]["spec"]["template"]["spec"]
    container = agent["containers"][0]
    assert container["image"] == images.AGENT_IMAGE and container["imagePullPolicy"] == "Never"
    assert operator["containers"][0]["image"] == images.OPERATOR_IMAGE
    assert operator["containers"][0]["imagePullPolicy"] == "Never"
    assert f"--kubelet-root={kubelet_root}" in container["args"]
    volumes = {v["name"]: v for v in agent["volumes"]}
    assert volumes["seccomp"]["hostPath"]["path"] == f"{kubelet_root}/seccomp/secprofiles"
    assert volumes["state"]["hostPath"]["path"] == str(state)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["seccomp"] == f"/host{kubelet_root}/seccomp/secprofiles"
    # everything else of the shipped base is there
    assert ("Service", "secprofiles-webhook") in objects and ("MutatingWebhookConfiguration", "secprofiles") in objects


def test_base_image_key_follows_the_debian_release_files() -> None:
    one = images.BaseInputs((b"Date: Sat, 10 Jan 2026 10:00:00 UTC\n", b"u", b"s"))
    two = images.BaseInputs((b"Date: Sat, 10 Jan 2026 10:00:00 UTC\n", b"u", b"s2"))  # a security update
    assert one.key == images.BaseInputs(one.releases).key and one.key != two.key
    assert one.image.startswith(images.LOCAL_BASE_REPOSITORY + ":")
    assert one.source_date_epoch == 1768039200
    command = images.mmdebstrap_command(one, Path("/w/docker-clean"), Path("/w/rootfs.tar"))
    assert "--include=python3,python3-venv,python-is-python3,passwd" in command
    assert "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr" in command  # no usrmerge, so no perl


def test_make_real_cluster_without_what_it_needs_exits_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(realcluster, "prerequisites", lambda: [
        "root (containerd, the kubelet and iptables need it)", "containerd (Debian package containerd)"])
    assert realcluster.main(["--dir", str(tmp_path / "rc")]) == 2
    err = capsys.readouterr().err
    assert "missing: root (containerd, the kubelet and iptables need it); containerd (Debian package containerd)" in err
    assert not (tmp_path / "rc").exists()  # nothing started, nothing made


def test_prerequisites_name_every_missing_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    from devtools import containerd, realnode

    monkeypatch.setattr(containerd.shutil, "which", lambda tool: None if tool in ("containerd", "nfacct") else tool)
    monkeypatch.setattr(realnode.os, "geteuid", lambda: 1000)
    missing = realnode.prerequisites()
    assert missing[0].startswith("root")
    assert "containerd (Debian package containerd)" in missing and "nfacct (Debian package nfacct)" in missing


def test_processes_naming_finds_only_the_nodes_programs(tmp_path: Path) -> None:
    child = subprocess.Popen(["sh", "-c", "sleep 30", str(tmp_path / "cluster")])
    try:
        assert child.pid in hoststate.processes_naming(tmp_path / "cluster", {"sh"})
        assert child.pid not in hoststate.processes_naming(tmp_path / "cluster", {"containerd", "controlplane"})
        assert child.pid not in hoststate.processes_naming(tmp_path / "other", {"sh"})
    finally:
        child.kill()
        child.wait()
