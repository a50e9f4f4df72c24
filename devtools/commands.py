"""The one way dev tooling runs the operator, the node agent and the node recorder as local processes: their command
lines, their environment, and a simulated node's host root. Used by the sandbox, the benchmarks and the tests alike."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.processes import Process

REPO = Path(__file__).resolve().parents[1]
#: Where the simulated AppArmor kernel lists loaded profiles, inside a host root (as securityfs does).
SECURITYFS = Path("sys/kernel/security/apparmor")
#: The kubelet root of simulated nodes, inside their host roots.
KUBELET_ROOT = "/var/lib/kubelet"


def python_env(root: Path = REPO) -> dict[str, str]:
    """The environment of a Python process of the checkout at ``root`` (this one by default; the benchmarks run an
    older checkout's processes too): its ``src`` and the checkout first on the path."""
    path = [str(root / "src"), str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(path)}


def python_process(name: str, module: str, arguments: Sequence[str], log: Path, root: Path = REPO) -> Process:
    """``python -m module arguments…`` as a supervised process of the checkout at ``root``."""
    return Process(name, [sys.executable, "-m", module, *arguments], log, env=python_env(root), cwd=root)


@dataclass(frozen=True)
class WebhookServing:
    """How an operator process serves the pod-binding webhook on loopback."""

    port: int
    cert_dir: Path
    config_name: str = "secprofiles"


def operator_arguments(kubeconfig: Path, *, lease: bool = False, metrics_port: int = 0, health_port: int = 0,
                       namespace: str | None = None, webhook: WebhookServing | None = None,
                       extra: Sequence[str] = ()) -> list[str]:
    """``python -m secprofiles.controller`` arguments: standalone unless ``lease`` (leader election as deployed);
    metrics and liveness only on the ports given (a port found free can be taken before the operator binds it)."""
    arguments = ["--kubeconfig", str(kubeconfig), "--metrics-port", str(metrics_port),
                 "--liveness", f"http://127.0.0.1:{health_port}/healthz" if health_port else ""]
    if not lease:
        arguments.append("--standalone")
    if namespace:
        arguments += ["--namespace", namespace]
    if webhook is not None:
        arguments += ["--webhook-port", str(webhook.port), "--webhook-host", "127.0.0.1",
                      "--cert-dir", str(webhook.cert_dir), "--webhook-config-name", webhook.config_name]
    return [*arguments, *extra]


def operator_process(kubeconfig: Path, log: Path, *, lease: bool = False, metrics_port: int = 0,
                     health_port: int = 0, namespace: str | None = None, webhook: WebhookServing | None = None,
                     extra: Sequence[str] = (), root: Path = REPO) -> Process:
    """The operator (of the checkout at ``root``) as a supervised process (see ``operator_arguments``)."""
    arguments = operator_arguments(kubeconfig, lease=lease, metrics_port=metrics_port, health_port=health_port,
                                   namespace=namespace, webhook=webhook, extra=extra)
    return python_process("operator", "secprofiles.controller", arguments, log, root)


def prepare_host_root(host_root: Path, apparmor: bool) -> Path:
    """A simulated node's host root; with ``apparmor``, the simulated securityfs the recording loader uses."""
    host_root.mkdir(parents=True, exist_ok=True)
    if apparmor:
        (host_root / SECURITYFS).mkdir(parents=True, exist_ok=True)
        (host_root / SECURITYFS / "profiles").touch()
    return host_root


def agent_arguments(kubeconfig: Path, node: str, host_root: Path, state_dir: Path, *, apparmor: bool = False,
                    health_port: int = 0, metrics_port: int = 0) -> list[str]:
    """``python -m secprofiles.agent`` arguments for a simulated node (AppArmor: the recording loader, a simulated
    kernel; see README). ``health_port`` 0: a free one, which the agent logs."""
    return ["--node-name", node, "--host-root", str(host_root), "--state-dir", str(state_dir),
            "--kubeconfig", str(kubeconfig), "--health-port", str(health_port), "--metrics-port", str(metrics_port),
            "--apparmor-loader", "recording" if apparmor else "kernel"]


def agent_process(kubeconfig: Path, node: str, base: Path, *, apparmor: bool = False, root: Path = REPO) -> Process:
    """The agent (of the checkout at ``root``) of a simulated node as a supervised process: host root
    ``base/host``, state ``base/state``, log ``base/agent.log``."""
    host_root = prepare_host_root(base / "host", apparmor)
    return python_process(f"agent {node}", "secprofiles.agent",
                          agent_arguments(kubeconfig, node, host_root, base / "state", apparmor=apparmor),
                          base / "agent.log", root)


def recorder_arguments(kubeconfig: Path, node: str, *, report_interval: float = 1.0) -> list[str]:
    """``python -m secprofiles.agent.recorder`` arguments for a node (it records this machine's processes: the
    simulated node's name only decides which RecordingReports it serves); health on any free loopback port."""
    return ["--node-name", node, "--kubeconfig", str(kubeconfig), "--report-interval", str(report_interval),
            "--health-port", "0", "--log-level", "DEBUG"]
