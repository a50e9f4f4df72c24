"""containerd for the real node: a private configuration, root, state and socket under the cluster directory, the
CRI plugin with a CNI bridge, and the images imported from podman (no registry is reachable).

* :func:`config_toml` and :func:`cni_conflist` are pure: what the files say, and why, is here.
* :class:`Containerd` runs it as a supervised process (``devtools.processes``), imports images
  (``podman save | ctr import`` into namespace ``k8s.io``, where the CRI plugin looks) and, before it stops,
  stops and removes every pod sandbox through CRI (``kube cri-clean``), which tears pod networking down (CNI DEL:
  veth, IPAM lease, network namespace) - killing tasks would leave those behind.

Pods get routes only to the Service range and the node's own address, no default route and no masquerading: pod
traffic cannot leave the machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devtools.processes import Process

CNI_BIN_DIR: Final = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
CNI_PLUGINS: Final = ("bridge", "host-local", "loopback", "portmap")
CNI_NETWORK: Final = "secprofiles-realnode"
SHIM: Final = "containerd-shim-runc-v2"


class ContainerdError(RuntimeError):
    """containerd did not start, or an image could not be imported."""


@dataclass(frozen=True)
class Network:
    """The node's addresses: the machine's own (node IP), the pod range on the bridge, the Service range."""

    node_ip: str
    bridge: str = "secprofiles0"
    pod_cidr: str = "10.244.0.0/24"
    pod_gateway: str = "10.244.0.1"
    service_cidr: str = "10.96.0.0/24"


#: containerd's sockets: unix socket paths are limited to ~104 bytes (``<socket>.ttrpc`` included) and a cluster
#: directory may be deep (pytest's temporary directories are); one real node per machine, so one fixed place.
SOCKET_DIR: Final = Path("/run/secprofiles-realnode")


@dataclass(frozen=True)
class Layout:
    """containerd's files under the cluster directory (its sockets in ``socket_dir``)."""

    base: Path
    socket_dir: Path = SOCKET_DIR

    @property
    def config(self) -> Path:
        """config.toml."""
        return self.base / "config.toml"

    @property
    def socket(self) -> Path:
        """The gRPC socket (CRI endpoint)."""
        return self.socket_dir / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        """The CNI configuration directory."""
        return self.base / "cni" / "net.d"

    @property
    def endpoint(self) -> str:
        """The CRI endpoint URL."""
        return f"unix://{self.socket}"


def config_toml(layout: Layout, sandbox_image: str) -> str:
    """containerd 1.6's configuration (version 2) with everything private to ``layout``."""
    base = layout.base
    return f"""version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{layout.socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # Root on this machine kind lacks CAP_SYS_RESOURCE: without this every sandbox fails ("can't get final child's
  # PID from pipe: EOF"; underneath "failed to update /proc/self/oom_score_adj: Permission denied").
  restrict_oom_score_adj = true
  # network namespaces under the state directory, not /var/run/netns
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{base / 'runc'}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{layout.cni_conf_dir}"
    max_conf_num = 1
"""


def cni_conflist(layout: Layout, network: Network) -> str:
    """A bridge network without masquerading whose pods route only to the Service range and the node's address."""
    return json.dumps({
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": network.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(layout.base / "cni" / "ipam"),
                      "ranges": [[{"subnet": network.pod_cidr, "gateway": network.pod_gateway}]],
                      "routes": [{"dst": network.service_cidr}, {"dst": f"{network.node_ip}/32"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2)


def missing_tools() -> list[str]:
    """What the real node's runtime needs and this machine lacks (Debian packages in parentheses)."""
    missing = [f"{tool} (Debian package {package})" for tool, package in
               (("containerd", "containerd"), ("ctr", "containerd"), ("runc", "runc"), ("podman", "podman"),
                ("iptables", "iptables"), ("nfacct", "nfacct")) if shutil.which(tool) is None]
    missing += [f"{CNI_BIN_DIR / plugin} (Debian package containernetworking-plugins)" for plugin in CNI_PLUGINS
                if not (CNI_BIN_DIR / plugin).exists()]
    return missing


class Containerd:
    """containerd with the files of ``layout``, as a supervised process."""

    def __init__(self, layout: Layout, network: Network, logs: Path, sandbox_image: str) -> None:
        self.layout, self.network, self.sandbox_image = layout, network, sandbox_image
        self.process = Process("containerd", ["containerd", "--config", str(layout.config), "--log-level", "warn"],
                               logs / "containerd.log", die_with_parent=True)

    def ctr(self, *args: str) -> list[str]:
        """A ``ctr`` command line against this containerd, namespace k8s.io."""
        return ["ctr", "--address", str(self.layout.socket), "--namespace", "k8s.io", *args]

    def start(self, timeout: float = 30.0) -> None:
        """Write the configuration and the CNI network, start, wait until it answers."""
        for sub in ("root", "state", "runc", "opt", "cni/ipam"):
            (self.layout.base / sub).mkdir(parents=True, exist_ok=True)
        self.layout.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.layout.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        self.layout.config.write_text(config_toml(self.layout, self.sandbox_image))
        (self.layout.cni_conf_dir / f"10-{CNI_NETWORK}.conflist").write_text(cni_conflist(self.layout,
                                                                                           self.network))
        self.process.start()
        deadline = time.monotonic() + timeout
        while subprocess.run(self.ctr("version"), capture_output=True, check=False).returncode != 0:
            self.process.check()
            if time.monotonic() > deadline:
                raise ContainerdError(f"containerd did not answer within {timeout:.0f}s; log {self.process.log}")
            time.sleep(0.1)

    def import_images(self, images: Sequence[str]) -> float:
        """``podman save`` of ``images`` (one archive: shared layers once) into this containerd; seconds taken."""
        started = time.monotonic()
        save = subprocess.Popen(["podman", "save", "--multi-image-archive", "--format", "docker-archive", *images],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        result = subprocess.run(self.ctr("images", "import", "-"), stdin=save.stdout, capture_output=True,
                                text=True, check=False)
        assert save.stdout is not None and save.stderr is not None
        save.stdout.close()
        saved_error = save.stderr.read().decode(errors="replace")
        if save.wait() != 0 or result.returncode != 0:
            raise ContainerdError(f"importing {', '.join(images)} failed: {saved_error.strip()} "
                                  f"{result.stderr.strip()}")
        listed = subprocess.run(self.ctr("images", "ls", "-q"), capture_output=True, text=True, check=True).stdout
        missing = [image for image in images if image not in listed.split()]
        if missing:
            raise ContainerdError(f"after the import containerd lacks {', '.join(missing)}")
        return time.monotonic() - started

    def remove_sandboxes(self, kube_binary: Path, log: Path) -> None:
        """Stop and remove every pod sandbox through CRI, then kill any task left (``ctr`` view)."""
        if not self.process.running:
            return
        with log.open("ab") as out:
            subprocess.run([str(kube_binary), "cri-clean", "--endpoint", self.layout.endpoint, "--timeout", "120s"],
                           stdout=out, stderr=subprocess.STDOUT, check=False, timeout=180)
        tasks = subprocess.run(self.ctr("tasks", "ls", "-q"), capture_output=True, text=True, check=False).stdout
        for task in tasks.split():
            subprocess.run(self.ctr("tasks", "kill", "-s", "KILL", task), capture_output=True, check=False)
            time.sleep(0.5)
            subprocess.run(self.ctr("tasks", "delete", task), capture_output=True, check=False)

    def stop(self) -> None:
        """Stop containerd, then any shim still naming its socket (shims outlive containerd by design)."""
        self.process.stop(grace=15)
        for pid in own_shims(self.layout.socket):
            subprocess.run(["kill", "-KILL", str(pid)], capture_output=True, check=False)
        shutil.rmtree(self.layout.socket_dir, ignore_errors=True)

    def shims(self) -> list[int]:
        """The runc shims serving this containerd."""
        return own_shims(self.layout.socket)


def own_shims(socket: Path) -> list[int]:
    """Process ids of ``containerd-shim-runc-v2`` processes whose command line names ``socket``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(SHIM.encode()) and str(socket).encode() in argv:
            found.append(int(cmdline.parent.name))
    return found
