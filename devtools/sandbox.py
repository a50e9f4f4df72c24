"""``python -m devtools.sandbox``: secprofiles end to end on this machine, no cluster or kubelet needed.

It starts the local control plane (``devtools.cluster``; the first run builds it, with progress), installs
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

**On a real node** (this machine has root, containerd and the CNI plugins, and no other real node runs): instead
of the simulated nodes, ``devtools.realcluster`` starts a kubelet + containerd node and installs secprofiles with
``kubectl apply --server-side -k`` (operator and agent as pods); the same profiles and binding are applied, and the
demo pod is the source document's (``chmod 777 /etc/hostname``, setting no profile): the webhook binds it, the
kubelet runs it with the agent's file, it ends ``Error`` and its log says chmod's EPERM, shown next to the table.
Where the machine cannot run a real node the sandbox says why and uses the simulated nodes; ``--simulated``
chooses them.

``--once``: wait until every bundled profile has settled (seccomp Installed on both nodes; AppArmor Installed on
the AppArmor node, Error on the other) and the ProfileBinding has counted the pod in its status, print the table
once, clean up, exit 0 (1 on timeout).
``--duration N``: the live table for N seconds, then clean up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import yaml

from devtools import images, install, objects
from devtools.build import BuildError, ensure_binary
from devtools.cluster import DevCluster, DevClusterError, sigterm_as_keyboard_interrupt
from devtools.commands import REPO, SECURITYFS, WebhookServing, agent_process, operator_process
from devtools.ports import free_port
from devtools.processes import Process, ProcessExitedError
from devtools.realcluster import NODE_NAME, RealCluster
from devtools.realnode import RealNodeUnavailableError, prerequisites
from secprofiles.controller.admission import binding
from secprofiles.controller.nodes import NodeView
from secprofiles.kube.client import Credentials, KubeApi
from secprofiles.model import keys
from secprofiles.model.nodereport import Report
from secprofiles.objects import Object
from secprofiles.resources import object_path, resource_path

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
FIELD_MANAGER: Final = "secprofiles-sandbox"


def say(message: str) -> None:
    """Progress on stderr."""
    print(f"sandbox: {message}", file=sys.stderr, flush=True)


@dataclass
class Node:
    """A simulated node: a Node object, a host root, an agent."""

    name: str
    host_root: Path
    apparmor: bool
    kubelet_root: Path = Path("/var/lib/kubelet")  # inside the host root

    @property
    def seccomp_dir(self) -> Path:
        """Where the agent writes seccomp files."""
        return self.host_root / self.kubelet_root.relative_to("/") / "seccomp" / keys.NODE_SUBDIR

    @property
    def apparmor_list(self) -> Path:
        """The simulated kernel's list of loaded AppArmor profiles."""
        return self.host_root / SECURITYFS / "profiles"


@dataclass
class Sandbox:
    """The running pieces, for the table and the clean-up."""

    base: Path
    cluster: DevCluster
    real: RealCluster | None = None  # the real node, when the sandbox runs on one
    nodes: list[Node] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    profiles: list[Object] = field(default_factory=list)
    demo_pod: Object | None = None  # as the API server stored it, after the webhook

    def check_processes(self) -> None:
        """Raise if any process has exited."""
        for process in self.processes:
            process.check()
        if self.real is not None:
            self.real.check_alive()


# --------------------------------------------------------------------------- setup


async def install_manifests(api: KubeApi, webhook_port: int) -> str:
    """Server-side apply the kubelet-free part of manifests/ (rendered by kustomize when available).

    The webhook configuration is applied with its Service replaced by ``https://127.0.0.1:<webhook_port>``;
    returns its name (the operator injects its CA there).
    """
    manifests = REPO / "manifests/base"
    if install.kustomize_command() is not None:
        rendered = install.render(manifests)
        how = " ".join(Path(part).name for part in install.kustomize_command() or [])
    else:
        rendered = install.render_resources(manifests)
        how = "the resources of the kustomization, untransformed (neither kubectl nor kustomize installed)"
    chosen = install.select(rendered, SANDBOX_KINDS)
    hooks = [install.loopback_webhooks(config, webhook_port) for config in install.select(rendered, [WEBHOOK_KIND])]
    if len(hooks) != 1:
        raise RuntimeError(f"manifests/base has {len(hooks)} {WEBHOOK_KIND}s, the sandbox expects one")
    say(f"applying {len(chosen) + 1} of {len(rendered)} objects of manifests/base ({how}): "
        + ", ".join(sorted({o['kind'] for o in chosen} | {WEBHOOK_KIND}))
        + f" (its Service replaced by https://127.0.0.1:{webhook_port})")
    await install.apply(api, [*chosen, *hooks], field_manager=FIELD_MANAGER)
    return str(hooks[0]["metadata"]["name"])


def bundled_profiles() -> list[Object]:
    """The profiles of profiles/, SeccompProfiles placed in the demo namespace."""
    found: list[Object] = []
    for path in sorted((REPO / "profiles").glob("*/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("SeccompProfile", "AppArmorProfile"):
                if doc["kind"] == "SeccompProfile":
                    doc["metadata"]["namespace"] = DEMO_NAMESPACE
                found.append(doc)
    return found


def demo_binding() -> Object:
    """A ProfileBinding of prevent-chmod to the pods labelled ``app: demo``."""
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "ProfileBinding",
            "metadata": {"name": DEMO_BINDING, "namespace": DEMO_NAMESPACE},
            "spec": {"profileRef": {"kind": "SeccompProfile", "name": BOUND_PROFILE},
                     "selector": {"matchLabels": {"app": "demo"}}}}


def demo_pod() -> Object:
    """A pod labelled ``app: demo`` that sets no seccomp profile: the webhook adds the one its binding names."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "demo", "namespace": DEMO_NAMESPACE, "labels": {"app": "demo"}},
            "spec": {"automountServiceAccountToken": False, "nodeName": SECCOMP_NODE,
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "demo", "image": "busybox", "command": ["sleep", "infinity"]}]}}


def is_bound(pod: Mapping[str, Any]) -> bool:
    """Whether the webhook bound ``pod``: it carries the secprofiles.io/profiles annotation."""
    return binding.PROFILES_ANNOTATION in ((pod.get("metadata") or {}).get("annotations") or {})


def document_pod() -> Object:
    """The source document's pod, labelled ``app: demo`` and setting no seccomp profile: ``chmod 777 /etc/hostname``
    in busybox, once (the real node runs it)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "demo", "namespace": DEMO_NAMESPACE, "labels": {"app": "demo"}},
            "spec": {"automountServiceAccountToken": False, "restartPolicy": "Never",
                     "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "demo", "image": images.BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                                     "command": ["chmod", "777", "/etc/hostname"]}]}}


async def create_bound_pod(sandbox: Sandbox, api: KubeApi, within: float, pod: Object | None = None) -> Object:
    """Create the demo pod once the webhook binds it; return it as stored.

    Until the bound profile is Installed on every node, the webhook admits the pod unbound with a warning;
    until the operator serves with its CA injected (or while its watch has not seen the binding or the
    profile's status), failurePolicy Ignore admits it unbound silently. So: wait for Installed, then dry runs
    (the webhook is called, nothing is stored or counted) until one comes back bound, then the real create.
    """
    pod = pod or demo_pod()
    deadline = time.monotonic() + within
    profile = next(p for p in sandbox.profiles if p["kind"] == "SeccompProfile"
                   and p["metadata"]["name"] == BOUND_PROFILE)
    say(f"waiting until SeccompProfile {DEMO_NAMESPACE}/{BOUND_PROFILE} is Installed and the webhook binds a "
        "dry-run pod")
    while True:
        sandbox.check_processes()
        status = (await api.get(object_path(profile)) or {}).get("status") or {}
        if status.get("phase") == "Installed":
            probe = (await install.apply(api, [pod], field_manager=FIELD_MANAGER, dry_run=True))[0]
            if is_bound(probe):
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the webhook did not bind a dry-run demo pod within {within:.0f}s "
                               f"(SeccompProfile {DEMO_NAMESPACE}/{BOUND_PROFILE} is {status.get('phase') or '-'}; "
                               f"see {sandbox.base / 'logs'})")
        await asyncio.sleep(0.2)
    pod = (await install.apply(api, [pod], field_manager=FIELD_MANAGER))[0]
    if not is_bound(pod):  # e.g. the operator stopped serving right after the probe
        raise RuntimeError(f"pod {DEMO_NAMESPACE}/demo was admitted without its binding")
    return pod


async def apply_profiles_and_binding(sandbox: Sandbox, api: KubeApi) -> None:
    """The bundled profiles and the demo ProfileBinding, on simulated and real nodes alike."""
    sandbox.profiles = bundled_profiles()
    await install.apply(api, sandbox.profiles, field_manager=FIELD_MANAGER)
    say(f"applied {len(sandbox.profiles)} bundled profiles from profiles/")
    await install.apply(api, [demo_binding()], field_manager=FIELD_MANAGER)
    say(f"applied ProfileBinding {DEMO_NAMESPACE}/{DEMO_BINDING} (SeccompProfile {BOUND_PROFILE} for pods "
        "labelled app=demo)")


async def start(sandbox: Sandbox, api: KubeApi) -> None:
    """Everything after the control plane, up to the bound demo pod; the caller owns the clean-up (:func:`stop`)."""
    base, cluster = sandbox.base, sandbox.cluster
    # Registered before the operator starts: it injects its CA at startup (then only every refresh interval).
    webhook_port = free_port()
    config_name = await install_manifests(api, webhook_port)
    await objects.ensure_namespace(api, DEMO_NAMESPACE, BINDING_LABEL)

    operator = await objects.service_account_kubeconfig(api, cluster, objects.OPERATOR_NAMESPACE,
                                                        "secprofiles-operator", path=base / "operator.kubeconfig")
    logs = base / "logs"
    serving = WebhookServing(webhook_port, base / "certs", config_name)
    process = operator_process(operator.kubeconfig, logs / "operator.log", lease=True, webhook=serving)
    sandbox.processes.append(process.start())
    say(f"operator running as {operator.username} (log {process.log}), serving the pod-binding webhook on "
        f"https://127.0.0.1:{webhook_port} (certificate in Secret "
        f"{objects.OPERATOR_NAMESPACE}/secprofiles-webhook-tls, CA injected into MutatingWebhookConfiguration "
        f"{config_name})")

    for name, apparmor in ((APPARMOR_NODE, True), (SECCOMP_NODE, False)):
        directory = base / "nodes" / name
        await objects.create_node(api, name, taints=[TAINT], labels={"secprofiles.io/sandbox": "true"})
        agent, _ = await objects.node_bound_agent_kubeconfig(api, cluster, name, base / f"agent-{name}.kubeconfig")
        process = agent_process(agent.kubeconfig, name, directory, apparmor=apparmor)
        process.log = logs / f"agent-{name}.log"
        sandbox.nodes.append(Node(name, directory / "host", apparmor))
        sandbox.processes.append(process.start())
        say(f"node {name}: agent running ({'simulated AppArmor kernel' if apparmor else 'no AppArmor'}; "
            f"host root {directory / 'host'})")

    await apply_profiles_and_binding(sandbox, api)
    sandbox.demo_pod = await create_bound_pod(sandbox, api, BIND_TIMEOUT)
    context = sandbox.demo_pod["spec"]["containers"][0].get("securityContext") or {}
    say(f"created pod {DEMO_NAMESPACE}/demo without a seccomp profile; the webhook set "
        f"seccompProfile {json.dumps(context.get('seccompProfile'))}")


async def start_real(sandbox: Sandbox, api: KubeApi) -> None:
    """On the real node (secprofiles installed by ``kubectl apply -k``): the profiles, the binding, the document's
    pod bound by the webhook."""
    await objects.ensure_namespace(api, DEMO_NAMESPACE, BINDING_LABEL)
    await apply_profiles_and_binding(sandbox, api)
    sandbox.demo_pod = await create_bound_pod(sandbox, api, BIND_TIMEOUT, document_pod())
    say(f"created the document's pod {DEMO_NAMESPACE}/demo (chmod 777 /etc/hostname) without a seccomp profile; "
        "the webhook bound it")


def pod_outcome(real: RealCluster) -> tuple[str, bool]:
    """``kubectl get pods`` and ``kubectl logs`` of the document's pod, and whether it has finished."""
    listing = real.kubectl("get", "pods", "-n", DEMO_NAMESPACE, "demo", check=False).stdout.rstrip()
    logs = real.kubectl("logs", "-n", DEMO_NAMESPACE, "demo", check=False)
    pod = real.cluster.admin.get(resource_path("Pod", namespace=DEMO_NAMESPACE, name="demo")) or {}
    finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") and bool(logs.stdout.strip())
    text = (f"$ kubectl get pods -n {DEMO_NAMESPACE} demo\n{listing}\n$ kubectl logs -n {DEMO_NAMESPACE} demo\n"
            f"{(logs.stdout or logs.stderr).rstrip()}")
    return text, finished


def stop(sandbox: Sandbox | None, base: Path, keep: bool) -> None:
    """Stop the processes and the control plane (or the real node); remove the directory unless ``keep``."""
    if sandbox is not None and sandbox.real is not None:
        leftovers = sandbox.real.stop()
        if leftovers:
            say("the machine differs from before the real node started: " + "; ".join(str(d) for d in leftovers))
    elif sandbox is not None:
        for process in reversed(sandbox.processes):
            process.stop()
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


def _where(node: Node, key: str) -> str:
    kind, namespace, name = keys.parse_key(key)
    if kind == keys.SECCOMP:
        path = node.seccomp_dir / namespace / f"{name}.json"
        return "/" + str(path.relative_to(node.host_root)) if path.exists() else "-"
    loaded = node.apparmor_list.read_text().splitlines() if node.apparmor_list.exists() else []
    hit = next((line for line in loaded if line.startswith(f"{name} (")), None)
    return f"loaded {hit[len(name):].strip()}" if hit else "-"


async def table(sandbox: Sandbox, api: KubeApi) -> list[Row]:
    """The current state: each profile's status, and per node what its NodeProfileStatus says of the profile's
    published version (read by the operator's own rules, ``controller.nodes``), with where the file landed."""
    view = NodeView()
    for node in sandbox.nodes:
        view.apply_node(node.name, True)
        report = await api.get(resource_path("NodeProfileStatus", name=node.name))
        view.apply_report(node.name, Report.from_object(report) if report else None)
    statuses = {keys.key_of(obj): ((await api.get(object_path(obj))) or {"status": {"phase": "absent"}}).get("status")
                or {} for obj in sandbox.profiles}
    view.set_renderings({key: status.get("contentHash") for key, status in statuses.items()})
    rows = []
    for key, status in statuses.items():
        failed = view.counts(key).failed if key in view.renderings else {}
        cells = []
        for node in sandbox.nodes:
            if node.name in failed:
                cells.append(f"Error: {failed[node.name]}")
            elif view.node_has(key, node.name):
                cells.append(f"Installed [{_where(node, key)}]")
            else:
                cells.append("-")
        rows.append(Row(key, status.get("phase") or "-", tuple(cells)))
    return rows


def format_table(sandbox: Sandbox, rows: list[Row]) -> str:
    """A plain-text table: PROFILE, PHASE, one column per node (state [where the file landed])."""
    header = ("PROFILE", "PHASE", *(f"{n.name} ({'AppArmor' if n.apparmor else 'no AppArmor'})"
                                     for n in sandbox.nodes))
    lines = [header, *((r.key, r.phase, *r.cells) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
    if sandbox.real is not None:
        root = sandbox.real.files.kubelet_root
        return f"{text}\n(file paths on this machine: node {NODE_NAME}'s kubelet root is {root})"
    roots = ", ".join(f"{n.name}: {n.host_root}" for n in sandbox.nodes)
    return f"{text}\n(file paths are inside each node's host root - {roots}; AppArmor: the simulated kernel's list)"


async def bound_pods(api: KubeApi) -> int | None:
    """The demo ProfileBinding's ``status.boundPods`` (None until the operator wrote it)."""
    stored = await api.get(object_path(demo_binding())) or {}
    count = (stored.get("status") or {}).get("boundPods")
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
            want = "Installed" if row.key.startswith(f"{keys.SECCOMP}/") or node.apparmor else "Error"
            if not cell.startswith(want):
                return False
    return True


# --------------------------------------------------------------------------- main


async def show(sandbox: Sandbox, api: KubeApi, args: argparse.Namespace, out: TextIO) -> int:
    """The table: live, once settled (``--once``) or for a while; the exit code."""
    live = out.isatty() and not args.once
    deadline = time.monotonic() + (args.timeout if args.once else args.duration or float("inf"))
    shown = ""
    while True:
        sandbox.check_processes()
        rows = await table(sandbox, api)
        count = await bound_pods(api)
        text = f"{format_table(sandbox, rows)}\n\n{format_binding(sandbox, count)}"
        finished = True
        if sandbox.real is not None:
            outcome, finished = await asyncio.to_thread(pod_outcome, sandbox.real)
            text += "\n\n" + outcome
        if args.once:
            if settled(sandbox, rows) and count and finished:
                print(text, file=out, flush=True)
                say("all bundled profiles settled; the ProfileBinding counted its pod")
                return 0
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
                return 1
            return 0
        await asyncio.sleep(1)


def real_node_unavailable(args: argparse.Namespace) -> str | None:
    """Why the sandbox does not run on a real node (None: it does)."""
    if args.simulated:
        return "--simulated"
    missing = prerequisites()
    return "this machine lacks " + "; ".join(missing) if missing else None


async def run_real(base: Path, args: argparse.Namespace, out: TextIO) -> int:
    """The sandbox on a real node under ``base``; 3 when another real node holds the machine (the caller falls back
    to the simulated nodes)."""
    real = RealCluster(base / "real", binary=ensure_binary())
    sandbox: Sandbox | None = Sandbox(base, DevCluster(base / "real"), real=real)
    try:
        say("images (built once, then cached by podman)")
        await asyncio.to_thread(images.build_all)
        say("starting the real node: control plane, containerd, kubelet, kube-proxy")
        try:
            real.start()  # on the main thread: its processes die with the thread that starts them
        except RealNodeUnavailableError as error:
            say(f"cannot run on a real node: {error}")
            sandbox = None  # nothing to stop
            return 3
        assert sandbox is not None
        sandbox.cluster = real.cluster
        say(f"installing secprofiles: kubectl apply --server-side -k {real.directory / 'overlay'}")
        real.install()
        sandbox.nodes = [Node(NODE_NAME, Path("/"), False, real.files.kubelet_root)]
        async with KubeApi(Credentials.from_kubeconfig(real.kubeconfig), user_agent="secprofiles-sandbox") as api:
            await start_real(sandbox, api)
            return await show(sandbox, api, args, out)
    except (DevClusterError, BuildError, ProcessExitedError, RuntimeError, TimeoutError, OSError, ValueError) as error:
        say(f"error: {error}")
        return 1
    finally:
        if sandbox is not None:
            stop(sandbox, base, args.keep)


async def run_in(base: Path, args: argparse.Namespace, out: TextIO) -> int:
    """Start everything under ``base``, show the table, clean up (also when cancelled); the exit code."""
    why = real_node_unavailable(args)
    if why is None:
        code = await run_real(base, args, out)
        if code != 3:
            return code
        why = "another real node runs on this machine"
    say(f"simulated nodes ({why}; a real node needs root, containerd, runc, the CNI plugins, iptables, nfacct)")
    sandbox: Sandbox | None = None
    try:
        say("control-plane binary (built once, then cached; the first build takes several minutes)")
        sandbox = Sandbox(base, DevCluster(base / "cluster", binary=ensure_binary()))
        say("starting etcd + kube-apiserver + kube-controller-manager")
        sandbox.cluster.start()  # on the main thread: its processes die with the thread that starts them
        async with KubeApi(Credentials.from_kubeconfig(sandbox.cluster.kubeconfig),
                           user_agent="secprofiles-sandbox") as api:
            await start(sandbox, api)
            return await show(sandbox, api, args, out)
    except (DevClusterError, BuildError, ProcessExitedError, RuntimeError, TimeoutError) as error:
        say(f"error: {error}")
        return 1
    finally:
        stop(sandbox, base, args.keep)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m devtools.sandbox", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="wait until every bundled profile settled and the demo binding counted its pod, "
                           "print the table once, clean up and exit")
    mode.add_argument("--duration", type=float, default=None, help="run for N seconds, then clean up")
    parser.add_argument("--timeout", type=float, default=120.0, help="--once: give up after this many seconds")
    parser.add_argument("--dir", default=None, help="the sandbox directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the directory (logs, host roots) afterwards")
    parser.add_argument("--simulated", action="store_true",
                        help="simulated nodes (agent processes) even where a real node could run")
    args = parser.parse_args(argv)
    base = Path(args.dir).resolve() if args.dir else Path(tempfile.mkdtemp(prefix="secprofiles-sandbox-"))
    base.mkdir(parents=True, exist_ok=True)
    say(f"everything lives under {base} (node host roots in {base / 'nodes'}, logs in {base / 'logs'})")
    try:
        with sigterm_as_keyboard_interrupt():
            return asyncio.run(run_in(base, args, sys.stdout))
    except KeyboardInterrupt:
        say("interrupted")
        return 0


if __name__ == "__main__":
    sys.exit(main())
