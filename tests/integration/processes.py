"""The operator, the node agent and the node recorder as real processes, as the integration tests drive them.

Both are ``devtools`` processes with ``devtools.commands`` command lines; what is added here is what tests ask of
them: the operator restarted with other arguments for one run, its endpoints on known ports; an agent's health port
(read from its log), HTTP probes and where its files land.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools.commands import (
    KUBELET_ROOT,
    REPO,
    SECURITYFS,
    WebhookServing,
    agent_arguments,
    operator_arguments,
    prepare_host_root,
    python_env,
    recorder_arguments,
)
from devtools.ports import free_port
from devtools.processes import Process
from secprofiles.model import keys

__all__ = ["SECURITYFS", "AgentProcess", "OperatorProcess", "RecorderProcess", "WebhookOperator"]


class OperatorProcess(Process):
    """``python -m secprofiles.controller``: standalone unless ``lease``; with ``endpoints``, metrics and liveness on
    free loopback ports (off otherwise: a port found free can be taken before the operator binds it)."""

    def __init__(self, kubeconfig: Path, log: Path, *extra: str, lease: bool = False, endpoints: bool = False,
                 webhook: WebhookServing | None = None, namespace: str | None = None) -> None:
        self.metrics_port, self.health_port = (free_port(), free_port()) if endpoints else (0, 0)
        self.arguments = operator_arguments(kubeconfig, lease=lease, metrics_port=self.metrics_port,
                                            health_port=self.health_port, namespace=namespace, webhook=webhook,
                                            extra=extra)
        super().__init__("operator", self._argv(), log, env=python_env(), cwd=REPO)

    def _argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "secprofiles.controller", *self.arguments, *extra]

    def start(self, *extra: str) -> OperatorProcess:
        """Start it (again), with ``extra`` arguments for this run only."""
        self.argv = self._argv(*extra)
        super().start()
        return self


class WebhookOperator(OperatorProcess):
    """The operator (standalone) serving the pod-binding webhook on 127.0.0.1:``port``, with its endpoints.

    It keeps its certificate in ``namespace`` and injects its CA into the configuration ``config_name``.
    """

    def __init__(self, kubeconfig: Path, directory: Path, namespace: str = "secprofiles-system",
                 config_name: str = "secprofiles") -> None:
        self.port = free_port()
        super().__init__(kubeconfig, directory / "operator.log", endpoints=True, namespace=namespace,
                         webhook=WebhookServing(self.port, directory / "certs", config_name))


class AgentProcess(Process):
    """``python -m secprofiles.agent`` for one simulated node: its host root, state and log under ``base``."""

    def __init__(self, kubeconfig: Path, node: str, base: Path, apparmor: bool = False) -> None:
        self.node, self.apparmor = node, apparmor
        self.host_root = prepare_host_root(base / "host", apparmor)
        self.state_dir = base / "state"
        self.seccomp_root = self.host_root / KUBELET_ROOT.lstrip("/") / "seccomp" / keys.NODE_SUBDIR
        self.health_port = 0
        super().__init__(f"agent {node}", [sys.executable, "-m", "secprofiles.agent",
                                           *agent_arguments(kubeconfig, node, self.host_root, self.state_dir,
                                                            apparmor=apparmor)],
                         base / "agent.log", env=python_env(), cwd=REPO)

    def start(self, timeout: float = 30) -> AgentProcess:
        """Start it (again) and wait until its health endpoint is listening."""
        offset = self.log_offset()
        super().start()
        deadline = time.monotonic() + timeout
        while (port := self._health_port(offset)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.node}: no health port after {timeout}s\n{self.tail()}")
            time.sleep(0.05)
        self.health_port = port
        return self

    def _health_port(self, offset: int) -> int | None:
        assert self.running, self.tail()
        for record in self.json_records(offset):
            if record.get("endpoint") == "health":
                return int(str(record["port"]))
        return None

    def http(self, path: str) -> int:
        """The status code of a GET on its health endpoint (0 if it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def file(self, namespace: str, name: str) -> Path:
        """Where a SeccompProfile's file lands on this node."""
        return self.host_root / KUBELET_ROOT.lstrip("/") / "seccomp" / keys.localhost_profile(namespace, name)


class RecorderProcess(Process):
    """``python -m secprofiles.agent.recorder`` for a node, optionally under ``prefix`` (e.g. ``setpriv`` dropping a
    capability); it records this machine's processes."""

    def __init__(self, kubeconfig: Path, node: str, log: Path, prefix: tuple[str, ...] = ()) -> None:
        super().__init__(f"recorder {node}", [*prefix, sys.executable, "-m", "secprofiles.agent.recorder",
                                              *recorder_arguments(kubeconfig, node)], log, env=python_env(), cwd=REPO)

    def logged(self, text: str) -> bool:
        """Whether its log holds ``text`` (e.g. that it cannot record, or its health port)."""
        return self.log.exists() and text in self.log.read_text(errors="replace")
