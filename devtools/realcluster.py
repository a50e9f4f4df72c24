"""A real one-node Kubernetes cluster on this machine, with secprofiles installed as users install it:
``make real-cluster DIR=<dir>`` (``python -m devtools.realcluster --dir DIR``), the real-node tests and
``make sandbox`` where the machine can run one.

``RealCluster`` composes the pieces, each in its own module: the control plane (``DevCluster`` with the API server
on the machine's address, aggregator routing so webhooks reach pod IPs, ``Node,RBAC`` authorization and the
``NodeRestriction`` admission plugin, all controllers, kube-scheduler), containerd with a CNI bridge
(``devtools.containerd``), the kubelet and kube-proxy (``devtools.realnode``), the images (``devtools.images``) and
the machine's state before and after (``devtools.hoststate``). Everything lives under one directory::

    DIR/kubeconfig        admin kubeconfig          DIR/pki, DIR/etcd, DIR/logs   control plane (and node logs)
    DIR/containerd        config, root, state, CNI configuration and IPAM (its socket: /run/secprofiles-realnode)
    DIR/kubelet           the kubelet's root (seccomp profiles in kubelet/seccomp/secprofiles)
    DIR/overlay           the install overlay (kustomization.yaml)
    DIR/host-before.json  the machine's state before the node started; DIR/host-after.json after it stopped
    DIR/ready             written once every product pod is Ready (``make real-cluster``)

Install (:meth:`RealCluster.install`): the product images imported into the node's containerd, then
``kubectl apply --server-side -k DIR/overlay``, an overlay generated into the cluster directory on top of the
shipped ``manifests/overlays/kubelet-root``: it sets the local images (``imagePullPolicy: Never``: a missing image
is ``ErrImageNeverPull``, never a pull attempt), the kubelet root and the agent's state directory - both paths
belong to this cluster directory, which is why the overlay is generated and not shipped.

Stop (:meth:`RealCluster.stop`): kubelet, every pod sandbox through CRI, containerd and its shims, kube-proxy, the
control plane; then mounts, network, cgroups, sysctls and system paths (``hoststate.Cleanup``), and a snapshot
compared with the one taken before: :attr:`RealCluster.leftovers` lists what differs and is the node's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from devtools import hoststate, images
from devtools.build import BuildError, ensure_binary
from devtools.cluster import DevCluster, DevClusterError, sigterm_as_keyboard_interrupt
from devtools.containerd import Containerd, ContainerdError, Layout, Network, own_shims
from devtools.ports import free_port
from devtools.realnode import (
    MachineLock,
    NodeFiles,
    NodeProcesses,
    RealNodeUnavailableError,
    add_guard_rules,
    machine_address,
    node_conflicts,
    prerequisites,
)
from devtools.waiting import eventually
from secprofiles.resources import resource_path

REPO: Final = Path(__file__).resolve().parents[1]
NODE_NAME: Final = "realnode"
PRODUCT_NAMESPACE: Final = "secprofiles-system"
OPERATOR: Final = "secprofiles-operator"
AGENT: Final = "secprofiles-agent"
KUBELET_ROOT_OVERLAY: Final = REPO / "manifests" / "overlays" / "kubelet-root"
#: The longest unix socket the kubelet makes under its root, and the kernel's limit on their paths.
LONGEST_SOCKET: Final = "pod-resources/1234567890"
MAX_SOCKET_PATH: Final = 107
#: The shipped kubelet-root overlay's example path, which the generated overlay tests before replacing it.
SHIPPED_KUBELET_ROOT: Final = "/var/lib/k0s/kubelet"


def say(message: str) -> None:
    """Progress on stderr."""
    print(f"real-cluster: {message}", file=sys.stderr, flush=True)


def install_overlay(kubelet_root: Path, agent_state: Path, overlay_dir: Path,
                    operator_image: str = images.OPERATOR_IMAGE, agent_image: str = images.AGENT_IMAGE) -> str:
    """The kustomization of the install overlay (pure: the text), placed at ``overlay_dir``."""
    def split(image: str) -> dict[str, str]:
        name, _, tag = image.rpartition(":")
        return {"newName": name, "newTag": tag}

    agent_patch = [
        {"op": "test", "path": "/spec/template/spec/containers/0/args/1",
         "value": f"--kubelet-root={SHIPPED_KUBELET_ROOT}"},
        {"op": "replace", "path": "/spec/template/spec/containers/0/args/1", "value": f"--kubelet-root={kubelet_root}"},
        {"op": "test", "path": "/spec/template/spec/containers/0/volumeMounts/0/name", "value": "seccomp"},
        {"op": "replace", "path": "/spec/template/spec/containers/0/volumeMounts/0/mountPath",
         "value": f"/host{kubelet_root}/seccomp/secprofiles"},
        {"op": "test", "path": "/spec/template/spec/volumes/0/name", "value": "seccomp"},
        {"op": "replace", "path": "/spec/template/spec/volumes/0/hostPath/path",
         "value": f"{kubelet_root}/seccomp/secprofiles"},
        {"op": "test", "path": "/spec/template/spec/volumes/1/name", "value": "state"},
        {"op": "replace", "path": "/spec/template/spec/volumes/1/hostPath/path", "value": str(agent_state)},
        {"op": "add", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"},
    ]
    operator_patch = [{"op": "add", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"}]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(KUBELET_ROOT_OVERLAY, overlay_dir)],
        "images": [{"name": "ghcr.io/secprofiles/secprofiles-operator", **split(operator_image)},
                   {"name": "ghcr.io/secprofiles/secprofiles-agent", **split(agent_image)}],
        "patches": [
            {"target": {"group": "apps", "version": "v1", "kind": "DaemonSet", "name": AGENT},
             "patch": yaml.safe_dump(agent_patch, sort_keys=False)},
            {"target": {"group": "apps", "version": "v1", "kind": "Deployment", "name": OPERATOR},
             "patch": yaml.safe_dump(operator_patch, sort_keys=False)},
        ],
    }
    header = ("# Generated by devtools/realcluster.py: secprofiles on the real node, installed with\n"
              "#   kubectl apply --server-side -k <this directory>\n"
              "# The shipped kubelet-root overlay with this cluster's kubelet root and agent state directory, and the\n"
              "# images built by `make images` (imported into the node's containerd; never pulled).\n")
    return header + yaml.safe_dump(kustomization, sort_keys=False)


def product_pods_ready(pods: Sequence[dict[str, Any]], operators: int = 2, agents: int = 1) -> bool:
    """Whether exactly the expected operator and agent pods exist and are all Ready (pure)."""
    def ready(pod: dict[str, Any]) -> bool:
        conditions = (pod.get("status") or {}).get("conditions") or []
        return not (pod.get("metadata") or {}).get("deletionTimestamp") and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def named(name: str) -> list[dict[str, Any]]:
        return [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/name")
                == name]

    return (len(named(OPERATOR)) == operators and len(named(AGENT)) == agents
            and all(ready(p) for p in (*named(OPERATOR), *named(AGENT))))


class RealCluster:
    """The control plane, containerd, the kubelet and kube-proxy of one real node, under ``directory``."""

    def __init__(self, directory: Path, *, binary: Path | None = None, log: Callable[[str], None] = say) -> None:
        self.directory = directory.resolve()
        self.log = log
        self._binary = binary
        self.lock = MachineLock()
        self.files = NodeFiles(self.directory)
        self.control_plane: DevCluster | None = None
        self.containerd: Containerd | None = None
        self.node: NodeProcesses | None = None
        self.network: Network | None = None
        self.before: hoststate.Snapshot | None = None
        self.leftovers: list[hoststate.Difference] = []
        self.timings: dict[str, float] = {}
        self._locked = False

    # ---------------------------------------------------------------- properties

    @property
    def binary(self) -> Path:
        """The multi-call Kubernetes binary (built when missing)."""
        if self._binary is None:
            self._binary = ensure_binary()
        return self._binary

    @property
    def programs(self) -> set[str]:
        """The node's programs by name: the multi-call binary, containerd and its shims."""
        return {self.binary.name, "containerd", "containerd-shim-runc-v2"}

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig."""
        return self.directory / "kubeconfig"

    @property
    def cluster(self) -> DevCluster:
        """The running control plane."""
        if self.control_plane is None:
            raise DevClusterError("the real cluster is not started")
        return self.control_plane

    @property
    def runtime(self) -> Containerd:
        """The running containerd."""
        if self.containerd is None:
            raise ContainerdError("the real cluster is not started")
        return self.containerd

    def kubectl(self, *args: str, check: bool = True, timeout: float = 300,
                input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """The binary's kubectl (the same release as the cluster) with the admin kubeconfig."""
        result = subprocess.run([str(self.binary), "kubectl", f"--kubeconfig={self.kubeconfig}", *args],
                                capture_output=True, text=True, check=False, timeout=timeout, input=input_text)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    # ---------------------------------------------------------------- start

    def start(self) -> RealCluster:
        """Everything up to a Ready Node with the pause and busybox images imported. Cleans up on failure."""
        missing = prerequisites()
        if missing:
            raise RealNodeUnavailableError("this machine cannot run a real node; missing: " + "; ".join(missing))
        if len(str(self.files.kubelet_root / LONGEST_SOCKET)) > MAX_SOCKET_PATH:
            raise ValueError(f"the cluster directory {self.directory} is too long: the kubelet's unix sockets under "
                             f"it would exceed {MAX_SOCKET_PATH} bytes; use a directory of at most "
                             f"{MAX_SOCKET_PATH - len('/kubelet/' + LONGEST_SOCKET)} characters")
        binary = self.binary  # built outside the start-up clock
        stale = self.lock.acquire()
        self._locked = True
        try:
            if stale is not None:
                self._clean_stale(stale)
            address = machine_address()
            assert address is not None  # prerequisites checked it
            self.network = Network(address)
            conflicts = node_conflicts(self.network.bridge)
            if conflicts:
                raise RealNodeUnavailableError(f"found {', '.join(conflicts)} without a running real node: another "
                                               "tool's node, or one that died before its clean-up")
            self._start(binary, self.network)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, binary: Path, network: Network) -> None:
        started = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.before = hoststate.snapshot()
        hoststate.save(self.before, self.directory / "host-before.json")
        self.lock.record(self.directory, network.bridge)
        apiserver_port = free_port()
        add_guard_rules(network, apiserver_port)  # before anything listens on the machine's address
        self.log(f"starting the control plane on https://{network.node_ip}:{apiserver_port}")
        self.control_plane = DevCluster(
            self.directory, binary=binary, address=network.node_ip, apiserver_port=apiserver_port, scheduler=True,
            controllers="*", stop_grace=5.0, quiet=True,
            apiserver_args=["--enable-aggregator-routing=true",
                            "--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,"
                            "ValidatingAdmissionWebhook,ValidatingAdmissionPolicy"])
        self.control_plane.start()
        self.timings["control plane"] = time.monotonic() - started
        mark = time.monotonic()
        self.containerd = Containerd(Layout(self.directory / "containerd"), network, self.directory / "logs",
                                     images.PAUSE_IMAGE)
        self.containerd.start()
        self.timings["containerd"] = time.monotonic() - mark
        self.ensure_images([images.PAUSE_IMAGE, images.BUSYBOX_IMAGE], node=True)
        self.timings["pause + busybox import"] = self.containerd.import_images([images.PAUSE_IMAGE,
                                                                                images.BUSYBOX_IMAGE])
        mark = time.monotonic()
        assert self.control_plane.pki is not None
        self.node = NodeProcesses(binary, self.files, self.control_plane.pki, self.control_plane.server,
                                  self.containerd.layout, network, NODE_NAME, self.directory / "logs")
        self.node.start()
        self.log(f"kubelet and kube-proxy started (node {NODE_NAME}, {network.node_ip}); waiting for Ready")
        self.wait_node_ready()
        self.timings["kubelet + kube-proxy -> Node Ready"] = time.monotonic() - mark
        self.timings["start"] = time.monotonic() - started

    def ensure_images(self, wanted: Sequence[str], *, node: bool) -> None:
        """Build the node's (``node``) or the product's images when podman lacks one of ``wanted``."""
        missing = [image for image in wanted if not images.podman_has(image)]
        if missing:
            self.log(f"building missing images {', '.join(missing)}")
            images.build_all(product=not node, node=node)

    def check_alive(self) -> None:
        """Raise if a process of the node or the control plane exited."""
        self.cluster.check_alive()
        self.runtime.process.check()
        if self.node is not None:
            for process in self.node.processes:
                process.check()

    def node_object(self) -> dict[str, Any] | None:
        """The Node as the API server has it."""
        return self.cluster.admin.get(resource_path("Node", name=NODE_NAME))

    def wait_node_ready(self, timeout: float = 180.0) -> None:
        """Until the Node reports Ready (and the default ServiceAccount exists: pods can be created)."""
        def ready() -> bool:
            self.check_alive()
            node = self.node_object() or {}
            conditions = (node.get("status") or {}).get("conditions") or []
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions) and bool(
                self.cluster.admin.get(resource_path("ServiceAccount", namespace="default", name="default")))

        eventually(ready, timeout, f"Node {NODE_NAME} Ready", interval=0.3)

    # ---------------------------------------------------------------- install

    def install(self, timeout: float = 300.0) -> float:
        """Import the product images, ``kubectl apply --server-side -k`` the overlay, wait until every product pod
        is Ready; the seconds from apply to Ready."""
        self.ensure_images(list(images.PRODUCT_IMAGES.values()), node=False)
        self.timings["product image import"] = self.runtime.import_images(list(images.PRODUCT_IMAGES.values()))
        overlay = self.directory / "overlay"
        overlay.mkdir(exist_ok=True)
        (overlay / "kustomization.yaml").write_text(install_overlay(self.files.kubelet_root, self.files.agent_state,
                                                                    overlay))
        started = time.monotonic()
        applied = self.kubectl("apply", "--server-side", "-k", str(overlay))
        (self.directory / "logs" / "apply.log").write_text(applied.stdout + applied.stderr)
        self.log(f"kubectl apply --server-side -k {overlay}: {len(applied.stdout.splitlines())} objects")
        self.wait_product_ready(timeout)
        self.timings["apply -k -> all product pods Ready"] = time.monotonic() - started
        return self.timings["apply -k -> all product pods Ready"]

    def product_pods(self) -> list[dict[str, Any]]:
        """The pods of the product's namespace."""
        listed = self.cluster.admin.get(resource_path("Pod", namespace=PRODUCT_NAMESPACE)) or {}
        return list(listed.get("items") or [])

    def wait_product_ready(self, timeout: float = 300.0) -> None:
        """Until the 2 operator pods and the agent pod are Ready."""
        def ready() -> bool:
            self.check_alive()
            return product_pods_ready(self.product_pods())

        try:
            eventually(ready, timeout, "every product pod Ready", interval=0.5)
        except TimeoutError as error:
            states = self.kubectl("get", "pods", "-n", PRODUCT_NAMESPACE, "-o", "wide", check=False).stdout
            raise TimeoutError(f"{error}\n{states}") from None

    # ---------------------------------------------------------------- stop

    def stop(self) -> list[hoststate.Difference]:
        """Stop everything, remove what it made, compare the machine with the snapshot; the node's leftovers."""
        logs = self.directory / "logs"
        started = time.monotonic()
        if self.node is not None:
            self.node.kubelet.stop(grace=30)
        if self.containerd is not None:
            self.containerd.remove_sandboxes(self.binary, logs / "cri-clean.log")
            self.containerd.stop()
        if self.node is not None:
            self.node.kube_proxy.stop(grace=15)
        if self.control_plane is not None:
            with contextlib.suppress(DevClusterError):
                self.control_plane.stop()
        left = hoststate.processes_naming(self.directory, self.programs)  # none: every stop ends with SIGKILL
        for pid, command in left.items():
            self.log(f"process {pid} still running after the stop: {command}")
        clean = not left
        if self.before is not None and self.network is not None:
            hoststate.Cleanup(self.directory, self.network.bridge, self.before, self._binary, self.log).run()
            after = hoststate.snapshot()
            hoststate.save(after, self.directory / "host-after.json")
            pattern = hoststate.ours_pattern(self.directory, self.network.bridge)
            found = hoststate.differences(self.before, after, pattern)
            for difference in found:
                self.log(f"after the stop, the machine differs: {difference}")
            self.leftovers = [d for d in found if d.ours]
            if left:
                self.leftovers.append(hoststate.Difference("processes", tuple(left.values()), (), True))
            clean = not self.leftovers
            self.timings["stop and clean-up"] = time.monotonic() - started
            if clean:
                self.log(f"stopped and cleaned up in {self.timings['stop and clean-up']:.1f}s; the machine's state "
                         "equals the snapshot before the start (iptables, nft, nfacct, links, addresses, routes, "
                         "netns, mounts, cgroups, sysctls, system paths)")
        if self._locked:
            self.lock.release(clean)
            self._locked = False
        self.node = self.containerd = self.control_plane = None
        self.before = None
        return self.leftovers

    def _clean_stale(self, record: dict[str, Any]) -> None:
        """A node that died without its clean-up: its shims, then everything ``hoststate.Cleanup`` removes."""
        directory, bridge = Path(record["dir"]), str(record.get("bridge", "secprofiles0"))
        self.log(f"a real node in {directory} ended without cleaning up: cleaning its traces first")
        # its components (the API server does not finish a SIGTERM shutdown), then its shims
        for pid in [*hoststate.processes_naming(directory, self.programs),
                    *own_shims(Layout(directory / "containerd").socket)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        snapshot_file = directory / "host-before.json"
        before = hoststate.load(snapshot_file) if snapshot_file.exists() else {}
        hoststate.Cleanup(directory, bridge, before, self._binary, self.log).run()
        self.lock.record_file.unlink(missing_ok=True)

    def __enter__(self) -> RealCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- make real-cluster


def main(argv: Sequence[str] | None = None) -> int:
    """``make real-cluster DIR=<dir>``: build what is missing, start, install, write DIR/ready, run until stopped."""
    parser = argparse.ArgumentParser(prog="python -m devtools.realcluster", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="the cluster directory (kubeconfig, logs, state)")
    args = parser.parse_args(argv)
    missing = prerequisites()
    if missing:
        say("this machine cannot run a real node; missing: " + "; ".join(missing))
        return 2
    directory: Path = args.dir.resolve()
    if (directory / "ready").exists():
        (directory / "ready").unlink()
    cluster = RealCluster(directory)
    status = 0
    with sigterm_as_keyboard_interrupt():
        try:
            started = time.monotonic()
            say("control-plane binary (built once, then cached; the first build takes several minutes)")
            cluster.binary  # noqa: B018 - build (or find) it now, with progress
            say("images (built once, then cached by podman; `make images` builds them too)")
            cluster.ensure_images([images.PAUSE_IMAGE, images.BUSYBOX_IMAGE], node=True)
            cluster.ensure_images(list(images.PRODUCT_IMAGES.values()), node=False)
            cluster.start()
            say(f"node {NODE_NAME} Ready in {cluster.timings['start']:.1f}s; installing secprofiles")
            cluster.install()
            (directory / "ready").write_text(f"{time.monotonic() - started:.1f}\n")
            timings = ", ".join(f"{k} {v:.1f}s" for k, v in cluster.timings.items())
            say(f"ready in {time.monotonic() - started:.1f}s ({timings})")
            say(f"export KUBECONFIG={cluster.kubeconfig}   # Ctrl-C (or SIGTERM) stops everything and cleans up")
            print(cluster.kubeconfig, flush=True)
            while True:
                time.sleep(1)
                cluster.check_alive()
        except KeyboardInterrupt:
            say("stopping")
        except (RealNodeUnavailableError, DevClusterError, ContainerdError, BuildError, images.ImageBuildError,
                RuntimeError, TimeoutError, ValueError) as error:
            say(f"error: {error}")
            status = 1
        finally:
            (directory / "ready").unlink(missing_ok=True)
            leftovers = cluster.stop()
            if leftovers:
                say("the machine differs from before the start: " + "; ".join(d.section for d in leftovers))
                status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
