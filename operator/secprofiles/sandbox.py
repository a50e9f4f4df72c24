"""``python -m secprofiles.sandbox``: secprofiles end to end on this machine, no cluster or kubelet needed.

It starts the local control plane (``secprofiles.devcluster``; the first run builds it, with progress), installs
what of ``manifests/`` makes sense without a kubelet (CRDs, namespace, service accounts, RBAC, admission policies,
and the pod-binding MutatingWebhookConfiguration with its Service replaced by a URL on 127.0.0.1) by server-side
apply, and runs as local processes, each AS its manifests' service account:

* the operator (``python -m secprofiles.controller``, with leader election on its Lease, as deployed), serving
  the pod-binding webhook on a free loopback port: it keeps its certificate in a Secret of secprofiles-system and
  injects its CA into the webhook configuration, as deployed;
* one agent per simulated node, each with its own host root under the printed directory: ``sandbox-apparmor``
  (``--apparmor-loader recording``: a simulated AppArmor kernel) and ``sandbox-seccomp`` (no AppArmor). Their
  tokens are bound to a Pod object on their node, like the kubelet's, so the admission policies apply.

Then it applies the bundled profiles of ``profiles/`` (SeccompProfiles into namespace ``demo``, labelled
``secprofiles.io/binding=enabled`` so the webhook serves it) and a demo ProfileBinding of ``prevent-chmod`` to pods
labelled ``app: demo``; once that profile is Installed and the webhook binds a dry-run pod, it creates a pod that
sets no seccomp profile of its own, and shows what the webhook gave it (``securityContext.seccompProfile``, the
``secprofiles.io/profiles`` annotation with the profile's content hash) under a live table of profiles x nodes
(state, and where each file landed) until Ctrl-C. Everything is stopped and removed on exit.

``--once``: wait until every bundled profile has settled (seccomp Installed on both nodes; AppArmor Installed on
the AppArmor node, Error on the other) and the ProfileBinding has counted the pod in its status, print the table
once, clean up, exit 0 (1 on timeout).
``--duration N``: the live table for N seconds, then clean up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import yaml

from secprofiles import binding, deploy
from secprofiles.devcluster import (
    DevCluster,
    DevClusterError,
    ensure_binary,
    free_port,
    repo_root,
    sigterm_as_keyboard_interrupt,
)
from secprofiles.devcluster_clients import create_node, service_account_kubeconfig

GROUP: Final = "/apis/secprofiles.io/v1alpha1"
DEMO_NAMESPACE: Final = "demo"
DEMO_BINDING: Final = "demo-prevent-chmod"
BOUND_PROFILE: Final = "prevent-chmod"
#: The webhook's namespaceSelector (manifests/base/webhook.yaml) matches namespaces with this label.
BINDING_LABEL: Final = {"secprofiles.io/binding": "enabled"}
#: From the demo binding's apply until the webhook binds a pod (the bound profile Installed on both nodes first).
BIND_TIMEOUT: Final = 60.0
TAINT: Final = {"key": "secprofiles.io/not-ready", "value": "", "effect": "NoSchedule"}
APPARMOR_NODE: Final = "sandbox-apparmor"
SECCOMP_NODE: Final = "sandbox-seccomp"
#: What of manifests/ works without a kubelet (workloads, Services, NetworkPolicies need real nodes).
SANDBOX_KINDS: Final = ("CustomResourceDefinition", "Namespace", "ServiceAccount", "ClusterRole",
                        "ClusterRoleBinding", "Role", "RoleBinding", "ValidatingAdmissionPolicy",
                        "ValidatingAdmissionPolicyBinding")
WEBHOOK_KIND: Final = "MutatingWebhookConfiguration"
AGENT_USER: Final = f"system:serviceaccount:{deploy.NAMESPACE}:secprofiles-agent"


def say(message: str) -> None:
    """Progress on stderr."""
    print(f"sandbox: {message}", file=sys.stderr, flush=True)


@dataclass
class Process:
    """A local process with its log file."""

    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (PYTHONPATH points at this checkout's package)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(repo_root() / "operator"), os.environ.get("PYTHONPATH"))
                                             if p)}
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)

    def check(self) -> None:
        """Raise if it has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; last lines of {self.log}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class Node:
    """A simulated node: a Node object, a host root, an agent."""

    name: str
    host_root: Path
    apparmor: bool

    @property
    def seccomp_dir(self) -> Path:
        """Where the agent writes seccomp files (kubelet root /var/lib/kubelet)."""
        return self.host_root / "var/lib/kubelet/seccomp/secprofiles"

    @property
    def apparmor_list(self) -> Path:
        """The simulated kernel's list of loaded AppArmor profiles."""
        return self.host_root / "sys/kernel/security/apparmor/profiles"


@dataclass
class Sandbox:
    """The running pieces, for the table and the clean-up."""

    base: Path
    cluster: DevCluster
    nodes: list[Node] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    demo_pod: dict[str, Any] | None = None  # as the API server stored it, after the webhook

    def check_processes(self) -> None:
        """Raise if any process has exited."""
        for proc in self.processes:
            proc.check()


# --------------------------------------------------------------------------- setup


def install_manifests(cluster: DevCluster, webhook_port: int) -> str:
    """Server-side apply the kubelet-free part of manifests/ (rendered by kustomize when available).

    The webhook configuration is applied with its Service replaced by ``https://127.0.0.1:<webhook_port>``;
    returns its name (the operator injects its CA there).
    """
    manifests = repo_root() / "manifests/base"
    if deploy.kustomize_command() is not None:
        objects = deploy.render(manifests)
        how = " ".join(Path(part).name for part in deploy.kustomize_command() or [])
    else:
        objects = deploy.render_resources(manifests)
        how = "the resources of the kustomization, untransformed (neither kubectl nor kustomize installed)"
    chosen = deploy.select(objects, SANDBOX_KINDS)
    hooks = [deploy.loopback_webhooks(config, webhook_port) for config in deploy.select(objects, [WEBHOOK_KIND])]
    if len(hooks) != 1:
        raise RuntimeError(f"manifests/base has {len(hooks)} {WEBHOOK_KIND}s, the sandbox expects one")
    say(f"applying {len(chosen) + 1} of {len(objects)} objects of manifests/base ({how}): "
        + ", ".join(sorted({o['kind'] for o in chosen} | {WEBHOOK_KIND}))
        + f" (its Service replaced by https://127.0.0.1:{webhook_port})")
    deploy.apply(cluster, [*chosen, *hooks], field_manager="secprofiles-sandbox")
    return str(hooks[0]["metadata"]["name"])


def bundled_profiles() -> list[dict[str, Any]]:
    """The profiles of profiles/, SeccompProfiles placed in the demo namespace."""
    found: list[dict[str, Any]] = []
    for path in sorted((repo_root() / "profiles").glob("*/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("SeccompProfile", "AppArmorProfile"):
                if doc["kind"] == "SeccompProfile":
                    doc["metadata"]["namespace"] = DEMO_NAMESPACE
                found.append(doc)
    return found


def demo_namespace() -> dict[str, Any]:
    """The demo namespace, labelled so the binding webhook serves it."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEMO_NAMESPACE, "labels": BINDING_LABEL}}


def demo_binding() -> dict[str, Any]:
    """A ProfileBinding of prevent-chmod to the pods labelled ``app: demo``."""
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "ProfileBinding",
            "metadata": {"name": DEMO_BINDING, "namespace": DEMO_NAMESPACE},
            "spec": {"profileRef": {"kind": "SeccompProfile", "name": BOUND_PROFILE},
                     "selector": {"matchLabels": {"app": "demo"}}}}


def demo_pod() -> dict[str, Any]:
    """A pod labelled ``app: demo`` that sets no seccomp profile: the webhook adds the one its binding names."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "demo", "namespace": DEMO_NAMESPACE, "labels": {"app": "demo"}},
            "spec": {"automountServiceAccountToken": False, "nodeName": SECCOMP_NODE,
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "demo", "image": "busybox", "command": ["sleep", "infinity"]}]}}


def is_bound(pod: Mapping[str, Any]) -> bool:
    """Whether the webhook bound ``pod``: it carries the secprofiles.io/profiles annotation."""
    return binding.PROFILES_ANNOTATION in ((pod.get("metadata") or {}).get("annotations") or {})


def create_bound_pod(sandbox: Sandbox, timeout: float) -> dict[str, Any]:
    """Create the demo pod once the webhook binds it; return it as stored.

    Until the bound profile is Installed on every node, the webhook admits the pod unbound with a warning;
    until the operator serves with its CA injected (or while its watch has not seen the binding or the
    profile's status), failurePolicy Ignore admits it unbound silently. So: wait for Installed, then dry runs
    (the webhook is called, nothing is stored or counted) until one comes back bound, then the real create.
    """
    cluster, deadline = sandbox.cluster, time.monotonic() + timeout
    profile = next(p for p in sandbox.profiles if p["kind"] == "SeccompProfile"
                   and p["metadata"]["name"] == BOUND_PROFILE)
    say(f"waiting until SeccompProfile {DEMO_NAMESPACE}/{BOUND_PROFILE} is Installed and the webhook binds a "
        "dry-run pod")
    while True:
        sandbox.check_processes()
        status = cluster.get(deploy.item_path(profile)).get("status") or {}
        if status.get("phase") == "Installed":
            probe = deploy.apply(cluster, [demo_pod()], field_manager="secprofiles-sandbox", dry_run=True)[0]
            if is_bound(probe):
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the webhook did not bind a dry-run demo pod within {timeout:.0f}s "
                               f"(SeccompProfile {DEMO_NAMESPACE}/{BOUND_PROFILE} is {status.get('phase') or '-'}; "
                               f"see {sandbox.base / 'logs'})")
        time.sleep(0.2)
    pod: dict[str, Any] = deploy.apply(cluster, [demo_pod()], field_manager="secprofiles-sandbox")[0]
    if not is_bound(pod):  # e.g. the operator stopped serving right after the probe
        raise RuntimeError(f"pod {DEMO_NAMESPACE}/demo was admitted without its binding")
    return pod


def start(base: Path) -> Sandbox:
    """Everything up to the applied profiles; the caller owns the clean-up (see :func:`stop`)."""
    say("control-plane binary (built once, then cached; the first build takes several minutes)")
    binary = ensure_binary()
    cluster = DevCluster(base / "cluster", binary=binary)
    sandbox = Sandbox(base=base, cluster=cluster)
    say("starting etcd + kube-apiserver + kube-controller-manager")
    cluster.start()
    # Registered before the operator starts: it injects its CA at startup (then only every refresh interval).
    webhook_port = free_port()
    config_name = install_manifests(cluster, webhook_port)
    deploy.apply(cluster, [demo_namespace()], field_manager="secprofiles-sandbox")

    operator = service_account_kubeconfig(cluster, deploy.NAMESPACE, "secprofiles-operator",
                                          path=base / "operator.kubeconfig")
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    proc = Process("operator", [sys.executable, "-m", "secprofiles.controller", "--kubeconfig",
                                str(operator.kubeconfig), "--metrics-port", "0", "--liveness", "",
                                "--webhook-port", str(webhook_port), "--webhook-host", "127.0.0.1",
                                "--cert-dir", str(base / "certs"), "--webhook-config-name", config_name],
                   logs / "operator.log")
    sandbox.processes.append(proc)
    proc.start()
    say(f"operator running as {operator.username} (log {proc.log}), serving the pod-binding webhook on "
        f"https://127.0.0.1:{webhook_port} (certificate in Secret {deploy.NAMESPACE}/secprofiles-webhook-tls, "
        f"CA injected into MutatingWebhookConfiguration {config_name})")

    for name, apparmor in ((APPARMOR_NODE, True), (SECCOMP_NODE, False)):
        node = Node(name, base / "nodes" / name / "host", apparmor)
        node.host_root.mkdir(parents=True)
        if apparmor:
            node.apparmor_list.parent.mkdir(parents=True)
            node.apparmor_list.touch()
        create_node(cluster, name, taints=[TAINT], labels={"secprofiles.io/sandbox": "true"})
        sandbox.nodes.append(node)
        token, _ = deploy.node_bound_agent_token(cluster, name)
        kubeconfig = deploy.write_token_kubeconfig(cluster, base / f"agent-{name}.kubeconfig", AGENT_USER, token)
        argv = [sys.executable, "-m", "secprofiles.agent", "--node-name", name, "--host-root", str(node.host_root),
                "--state-dir", str(base / "nodes" / name / "state"), "--kubeconfig", str(kubeconfig),
                "--health-port", "0"]
        if apparmor:
            argv += ["--apparmor-loader", "recording"]
        proc = Process(f"agent {name}", argv, logs / f"agent-{name}.log")
        sandbox.processes.append(proc)
        proc.start()
        say(f"node {name}: agent running ({'simulated AppArmor kernel' if apparmor else 'no AppArmor'}; "
            f"host root {node.host_root})")

    sandbox.profiles = bundled_profiles()
    deploy.apply(cluster, sandbox.profiles, field_manager="secprofiles-sandbox")
    say(f"applied {len(sandbox.profiles)} bundled profiles from profiles/")
    deadline = time.monotonic() + 30
    while cluster.request("GET", f"/api/v1/namespaces/{DEMO_NAMESPACE}/serviceaccounts/default")[0] != 200:
        if time.monotonic() > deadline:  # the service-account controller creates it; pods need it
            raise TimeoutError(f"no default service account in namespace {DEMO_NAMESPACE}")
        time.sleep(0.1)
    deploy.apply(cluster, [demo_binding()], field_manager="secprofiles-sandbox")
    say(f"applied ProfileBinding {DEMO_NAMESPACE}/{DEMO_BINDING} (SeccompProfile {BOUND_PROFILE} for pods "
        "labelled app=demo)")
    sandbox.demo_pod = create_bound_pod(sandbox, BIND_TIMEOUT)
    context = sandbox.demo_pod["spec"]["containers"][0].get("securityContext") or {}
    say(f"created pod {DEMO_NAMESPACE}/demo without a seccomp profile; the webhook set "
        f"seccompProfile {json.dumps(context.get('seccompProfile'))}")
    return sandbox


def stop(sandbox: Sandbox | None, base: Path, keep: bool) -> None:
    """Stop the processes and the control plane; remove the directory unless ``keep``."""
    if sandbox is not None:
        for proc in reversed(sandbox.processes):
            proc.stop()
        with suppress(DevClusterError):
            sandbox.cluster.stop()
    if keep:
        say(f"kept {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
        say(f"removed {base}")


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    """One profile and its state on each node."""

    key: str
    phase: str
    cells: tuple[str, ...]


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    if obj["kind"] == "SeccompProfile":
        return f"seccomp/{meta['namespace']}/{meta['name']}"
    return f"apparmor/{meta['name']}"


def _where(node: Node, key: str) -> str:
    kind, _, rest = key.partition("/")
    if kind == "seccomp":
        path = node.seccomp_dir / f"{rest}.json"
        return "/" + str(path.relative_to(node.host_root)) if path.exists() else "-"
    name = rest
    loaded = node.apparmor_list.read_text().splitlines() if node.apparmor_list.exists() else []
    hit = next((line for line in loaded if line.startswith(f"{name} (")), None)
    return f"loaded {hit[len(name):].strip()}" if hit else "-"


def table(sandbox: Sandbox) -> list[Row]:
    """The current state, from the API server (profiles' status, NodeProfileStatuses) and the host roots."""
    cluster = sandbox.cluster
    reports: dict[str, dict[str, Any]] = {}
    for node in sandbox.nodes:
        status, raw = cluster.request("GET", f"{GROUP}/nodeprofilestatuses/{node.name}")
        reports[node.name] = ((json.loads(raw).get("status") or {}).get("profiles") or {}) if status == 200 else {}
    rows = []
    for obj in sandbox.profiles:
        key = _key(obj)
        status, raw = cluster.request("GET", deploy.item_path(obj))
        phase = ((json.loads(raw).get("status") or {}).get("phase") or "-") if status == 200 else "absent"
        cells = []
        for node in sandbox.nodes:
            entry = reports[node.name].get(key) or {}
            state = entry.get("state", "-")
            if state == "Error" and entry.get("message"):
                state = f"Error: {entry['message']}"
            cells.append(f"{state} [{_where(node, key)}]" if state == "Installed" else state)
        rows.append(Row(key, phase, tuple(cells)))
    return rows


def format_table(sandbox: Sandbox, rows: list[Row]) -> str:
    """A plain-text table: PROFILE, PHASE, one column per node (state [where the file landed])."""
    header = ("PROFILE", "PHASE", *(f"{n.name} ({'AppArmor' if n.apparmor else 'no AppArmor'})"
                                     for n in sandbox.nodes))
    lines = [header, *((r.key, r.phase, *r.cells) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
    roots = ", ".join(f"{n.name}: {n.host_root}" for n in sandbox.nodes)
    return f"{text}\n(file paths are inside each node's host root - {roots}; AppArmor: the simulated kernel's list)"


def bound_pods(sandbox: Sandbox) -> int | None:
    """The demo ProfileBinding's ``status.boundPods`` (None until the operator wrote it)."""
    status, raw = sandbox.cluster.request("GET", deploy.item_path(demo_binding()))
    count = ((json.loads(raw).get("status") or {}).get("boundPods")) if status == 200 else None
    return int(count) if count is not None else None


def format_binding(sandbox: Sandbox, count: int | None) -> str:
    """What the webhook gave the demo pod (which sets no profile itself), and the binding's count."""
    pod = sandbox.demo_pod or {}
    lines = [f"pod {DEMO_NAMESPACE}/demo (its manifest sets no seccomp profile), as admitted through the webhook:"]
    for container in (pod.get("spec") or {}).get("containers") or []:
        profile = (container.get("securityContext") or {}).get("seccompProfile")
        lines.append(f"  containers[{container['name']}].securityContext.seccompProfile: {json.dumps(profile)}")
    annotation = ((pod.get("metadata") or {}).get("annotations") or {}).get(binding.PROFILES_ANNOTATION)
    lines.append(f"  metadata.annotations[{binding.PROFILES_ANNOTATION}]: {annotation}")
    lines.append(f"ProfileBinding {DEMO_NAMESPACE}/{DEMO_BINDING}: boundPods {'-' if count is None else count}")
    return "\n".join(lines)


def settled(sandbox: Sandbox, rows: list[Row]) -> bool:
    """Every seccomp profile Installed on every node; AppArmor Installed where AppArmor is, Error elsewhere."""
    for row in rows:
        for node, cell in zip(sandbox.nodes, row.cells, strict=True):
            want = "Installed" if row.key.startswith("seccomp/") or node.apparmor else "Error"
            if not cell.startswith(want):
                return False
    return True


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Start, show the table (live, once or for a while), clean up; the exit code."""
    base = Path(args.dir).resolve() if args.dir else Path(tempfile.mkdtemp(prefix="secprofiles-sandbox-"))
    base.mkdir(parents=True, exist_ok=True)
    say(f"everything lives under {base} (node host roots in {base / 'nodes'}, logs in {base / 'logs'})")
    sandbox: Sandbox | None = None
    code = 0
    with sigterm_as_keyboard_interrupt():
        try:
            sandbox = start(base)
            live = out.isatty() and not args.once
            deadline = time.monotonic() + (args.timeout if args.once else args.duration or float("inf"))
            shown = ""
            while True:
                sandbox.check_processes()
                rows = table(sandbox)
                count = bound_pods(sandbox)
                text = f"{format_table(sandbox, rows)}\n\n{format_binding(sandbox, count)}"
                if args.once:
                    if settled(sandbox, rows) and count:
                        print(text, file=out, flush=True)
                        say("all bundled profiles settled; the ProfileBinding counted its pod")
                        break
                elif text != shown:
                    print(("\x1b[H\x1b[J" if live else "\n") + text, file=out, flush=True)
                    if live:
                        print("\nCtrl-C stops and cleans up.", file=out, flush=True)
                    shown = text
                if time.monotonic() > deadline:
                    if args.once:
                        print(text, file=out, flush=True)
                        say(f"timed out after {args.timeout:.0f}s: not every profile settled, "
                            "or the ProfileBinding did not count its pod")
                        code = 1
                    break
                time.sleep(1)
        except KeyboardInterrupt:
            say("interrupted")
        except (DevClusterError, RuntimeError, TimeoutError) as error:
            say(f"error: {error}")
            code = 1
        finally:
            stop(sandbox, base, args.keep)
    return code


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m secprofiles.sandbox", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="wait until every bundled profile settled and the demo binding counted its pod, "
                           "print the table once, clean up and exit")
    mode.add_argument("--duration", type=float, default=None, help="run for N seconds, then clean up")
    parser.add_argument("--timeout", type=float, default=120.0, help="--once: give up after this many seconds")
    parser.add_argument("--dir", default=None, help="the sandbox directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the directory (logs, host roots) afterwards")
    return run(parser.parse_args(argv), sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
