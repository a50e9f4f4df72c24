"""The operator as a real process, as tests run it: one helper for every suite."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """``python -m secprofiles.controller``; with ``endpoints``, metrics and liveness on free loopback ports.

    Endpoints are off unless a test reads them: a port found free can be taken before the operator binds it.
    """

    def __init__(self, kubeconfig: Path, log: Path, *args: str, endpoints: bool = False) -> None:
        self.kubeconfig, self.log, self.args = kubeconfig, log, args
        self.metrics_port, self.health_port = (free_port(), free_port()) if endpoints else (0, 0)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def start(self, *extra: str) -> None:
        """Start it (again), with ``extra`` arguments after the constructor's."""
        liveness = f"http://127.0.0.1:{self.health_port}/healthz" if self.health_port else ""
        command = [sys.executable, "-m", "secprofiles.controller", "--kubeconfig", str(self.kubeconfig),
                   "--metrics-port", str(self.metrics_port), "--liveness", liveness, *self.args, *extra]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it with ``sig`` (SIGKILL after 15 s)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, lines: int = 40) -> str:
        """The end of its log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class WebhookOperator(OperatorProcess):
    """The operator as a real process, serving the pod-binding webhook on 127.0.0.1:``port``.

    It keeps its certificate in ``namespace`` and injects its CA into the configuration ``config_name``.
    """

    def __init__(self, kubeconfig: Path, directory: Path, namespace: str = "secprofiles-system",
                 config_name: str = "secprofiles") -> None:
        self.port = free_port()
        super().__init__(kubeconfig, directory / "operator.log", "--standalone",
                         "--webhook-port", str(self.port), "--webhook-host", "127.0.0.1",
                         "--cert-dir", str(directory / "certs"), "--namespace", namespace,
                         "--webhook-config-name", config_name, endpoints=True)
