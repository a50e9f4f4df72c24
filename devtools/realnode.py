"""The real node's kubelet and kube-proxy, and what keeps a real node safe on a shared machine.

* :func:`kubelet_config` and :func:`kube_proxy_config` (pure): the configurations, each choice explained.
* :class:`NodeProcesses`: the kubelet (its own client certificate ``system:node:<name>`` in group
  ``system:nodes``, never the admin credential; a serving certificate from the cluster CA; a root directory
  private to the cluster directory; registered with the ``secprofiles.io/not-ready`` taint) and kube-proxy
  (iptables mode), as supervised processes.
* :class:`GuardRules`: iptables rules (comment :data:`hoststate.RULE_COMMENT`) added before anything listens: nothing
  is forwarded between the pod bridge and any other interface, and the API server's and kubelet's ports on the
  machine's address answer only this machine and its pods.
* :class:`MachineLock`: one real node per machine (kube-proxy's chains and the bridge are machine-wide names): an
  ``flock`` held while the node runs, and a record of the running node's directory, so a node that died without
  its clean-up is cleaned before the next one starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import yaml

from devtools.clusterpki import ClusterPki, write_kubeconfig, write_pair
from devtools.containerd import Layout, Network, missing_tools
from devtools.hoststate import RULE_COMMENT
from devtools.processes import Process

#: The readiness taint the agent removes after its first sync (README: Node readiness).
NOT_READY_TAINT: Final = {"key": "secprofiles.io/not-ready", "value": "true", "effect": "NoSchedule"}
KUBELET_PORT: Final = 10250
LOCK_FILE: Final = Path("/run/lock/secprofiles-realnode.lock")
RECORD_FILE: Final = Path("/run/secprofiles-realnode.json")


class RealNodeUnavailableError(RuntimeError):
    """This machine cannot run a real node (the message names what is missing), or another one runs here."""


def machine_address() -> str | None:
    """The machine's first global IPv4 address: the API server listens on it and the kubelet reports it (pods
    reach it; a loopback address would not do, and ``kubectl logs`` needs a non-loopback node address)."""
    result = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True,
                            check=False)
    for line in result.stdout.splitlines():
        words = line.split()
        if "inet" in words:
            return words[words.index("inet") + 1].split("/")[0]
    return None


@dataclass(frozen=True)
class NodeFiles:
    """The node's files under the cluster directory."""

    base: Path

    @property
    def kubelet_root(self) -> Path:
        """The kubelet's ``--root-dir`` (seccomp profiles under ``seccomp/``)."""
        return self.base / "kubelet"

    @property
    def seccomp_dir(self) -> Path:
        """Where the agent writes seccomp files for this kubelet."""
        return self.kubelet_root / "seccomp" / "secprofiles"

    @property
    def agent_state(self) -> Path:
        """The agent's state hostPath (else /var/lib/secprofiles-agent on the machine)."""
        return self.base / "agent-state"

    @property
    def pod_logs(self) -> Path:
        """The kubelet's ``podLogsDir``."""
        return self.base / "pod-logs"


def kubelet_config(files: NodeFiles, pki: ClusterPki, runtime: Layout, node_ip: str) -> dict[str, Any]:
    """The KubeletConfiguration of the real node."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": node_ip, "port": KUBELET_PORT, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        # Only the API server (client certificate from the cluster CA) and authorized tokens reach it.
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki.ca_file)}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki.file("kubelet-serving.crt")), "tlsPrivateKeyFile": str(pki.file("kubelet-serving.key")),
        "containerRuntimeEndpoint": runtime.endpoint,
        # This machine kind: hybrid cgroup v1, no systemd, swap allowed.
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "clusterDomain": "cluster.local", "resolvConf": "",  # no cluster DNS; pods fall back to the default policy
        "podLogsDir": str(files.pod_logs),
        "maxPods": 50, "serializeImagePulls": False,
        # As the README asks of every node: no pods before the agent's first sync.
        "registerWithTaints": [NOT_READY_TAINT],
        # The machine's disk is shared and often fuller than the defaults allow.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 100,
    }


def kube_proxy_config(kubeconfig: Path, node_name: str, network: Network) -> dict[str, Any]:
    """The KubeProxyConfiguration (iptables mode) of the real node."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node_name, "mode": "iptables",
        "clusterCIDR": network.pod_cidr, "detectLocalMode": "ClusterCIDR",
        "nodePortAddresses": ["primary"],
        "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
        # else kube-proxy sets net.ipv4.conf.all.route_localnet=1
        "iptables": {"localhostNodePorts": False},
        # 0: leave the machine's conntrack sysctls alone
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def node_certificates(pki: ClusterPki, node_name: str, node_ip: str) -> None:
    """The kubelet's client (``system:node:<name>``, group ``system:nodes``) and serving certificates, and
    kube-proxy's client certificate."""
    pki.client("kubelet-client", f"system:node:{node_name}", ["system:nodes"])
    write_pair(pki.ca, pki.directory, "kubelet-serving", f"system:node:{node_name}", organizations=["system:nodes"],
               server=True, hosts=[node_name, node_ip])
    pki.client("kube-proxy", "system:kube-proxy")


class NodeProcesses:
    """The kubelet and kube-proxy of one node."""

    def __init__(self, binary: Path, files: NodeFiles, pki: ClusterPki, server: str, runtime: Layout,
                 network: Network, node_name: str, logs: Path) -> None:
        self.files, self.node_name = files, node_name
        node_certificates(pki, node_name, network.node_ip)
        kubelet_kubeconfig = write_kubeconfig(files.base / "kubelet.kubeconfig", server, pki.ca_file,
                                              f"system:node:{node_name}", {
                                                  "client-certificate": str(pki.file("kubelet-client.crt")),
                                                  "client-key": str(pki.file("kubelet-client.key"))})
        proxy_kubeconfig = write_kubeconfig(files.base / "kube-proxy.kubeconfig", server, pki.ca_file,
                                            "system:kube-proxy", {
                                                "client-certificate": str(pki.file("kube-proxy.crt")),
                                                "client-key": str(pki.file("kube-proxy.key"))})
        kubelet_yaml = files.base / "kubelet-config.yaml"
        kubelet_yaml.write_text(yaml.safe_dump(kubelet_config(files, pki, runtime, network.node_ip)))
        proxy_yaml = files.base / "kube-proxy-config.yaml"
        proxy_yaml.write_text(yaml.safe_dump(kube_proxy_config(proxy_kubeconfig, node_name, network)))
        for directory in (files.kubelet_root, files.pod_logs, files.agent_state):
            directory.mkdir(parents=True, exist_ok=True)
        self.kubelet = Process("kubelet", [
            str(binary), "kubelet", f"--config={kubelet_yaml}", f"--kubeconfig={kubelet_kubeconfig}",
            f"--root-dir={files.kubelet_root}", f"--hostname-override={node_name}", f"--node-ip={network.node_ip}",
            "--v=1"], logs / "kubelet.log", die_with_parent=True)
        self.kube_proxy = Process("kube-proxy", [str(binary), "kube-proxy", f"--config={proxy_yaml}", "--v=1"],
                                  logs / "kube-proxy.log", die_with_parent=True)

    @property
    def processes(self) -> list[Process]:
        """Both, kubelet first."""
        return [self.kubelet, self.kube_proxy]

    def start(self) -> None:
        """Start the kubelet and kube-proxy (the caller waits for the Node to be Ready)."""
        self.kubelet.start()
        self.kube_proxy.start()


# --------------------------------------------------------------------------- the machine's safety


def guard_rules(network: Network, apiserver_port: int) -> list[list[str]]:
    """``iptables`` arguments (``-I`` at the top of filter chains) keeping the node to this machine."""
    comment = ["-m", "comment", "--comment", RULE_COMMENT, "-j", "DROP"]
    return [
        ["-I", "FORWARD", "1", "-i", network.bridge, "!", "-o", network.bridge, *comment],
        ["-I", "FORWARD", "1", "!", "-i", network.bridge, "-o", network.bridge, *comment],
        ["-I", "INPUT", "1", "-d", network.node_ip, "-p", "tcp", "-m", "multiport", "--dports",
         f"{apiserver_port},{KUBELET_PORT}", "-m", "addrtype", "!", "--src-type", "LOCAL", "!", "-s",
         network.pod_cidr, *comment],
    ]


def add_guard_rules(network: Network, apiserver_port: int) -> None:
    """Add :func:`guard_rules` (removed by ``hoststate.Cleanup`` with the rest)."""
    for rule in guard_rules(network, apiserver_port):
        subprocess.run(["iptables", *rule], check=True, capture_output=True)


def node_conflicts(bridge: str) -> list[str]:
    """Traces of another real node on this machine (its kube-proxy chains or bridge)."""
    found = []
    if subprocess.run(["iptables", "-t", "nat", "-S", "KUBE-SERVICES"], capture_output=True,
                      check=False).returncode == 0:
        found.append("iptables chain KUBE-SERVICES (nat)")
    if subprocess.run(["ip", "link", "show", bridge], capture_output=True, check=False).returncode == 0:
        found.append(f"network link {bridge}")
    return found


class MachineLock:
    """The one-real-node-per-machine lock and the record of the node that holds it."""

    def __init__(self, lock_file: Path = LOCK_FILE, record_file: Path = RECORD_FILE) -> None:
        self.lock_file, self.record_file = lock_file, record_file
        self._handle: IO[str] | None = None

    def acquire(self) -> dict[str, Any] | None:
        """Take the lock or raise; return the record of a previous node that did not clean up (None if clean)."""
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        handle = self.lock_file.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise RealNodeUnavailableError(
                f"another real node runs on this machine ({holder or self.lock_file}); only one can: kube-proxy's "
                "chains and the bridge are machine-wide") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        if self.record_file.exists():
            with contextlib.suppress(ValueError, OSError):
                record: dict[str, Any] = json.loads(self.record_file.read_text())
                return record
        return None

    def record(self, cluster_dir: Path, bridge: str) -> None:
        """Note the running node (read by the next :meth:`acquire` if this one dies without cleaning)."""
        self.record_file.write_text(json.dumps({"dir": str(cluster_dir), "bridge": bridge, "pid": os.getpid()}))

    def release(self, clean: bool) -> None:
        """Drop the record (when the node was cleaned) and the lock."""
        if clean:
            self.record_file.unlink(missing_ok=True)
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def prerequisites() -> list[str]:
    """What this machine lacks for a real node: root, the tools (``containerd.missing_tools``), an address."""
    missing = [] if os.geteuid() == 0 else ["root (containerd, the kubelet and iptables need it)"]
    missing += missing_tools()
    if machine_address() is None:
        missing.append("a non-loopback IPv4 address on this machine (for the API server and the kubelet)")
    return missing
