"""The operator and the node agent as real processes, as tests run them: one helper each for every suite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from secprofiles.devcluster import free_port

REPO = Path(__file__).resolve().parents[2]
SECURITYFS = Path("sys/kernel/security/apparmor")


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


class AgentProcess:
    """``python -m secprofiles.agent`` for one simulated node: its host root, state and log under ``base``."""

    def __init__(self, kubeconfig: Path, node: str, base: Path, apparmor: bool = False) -> None:
        self.node, self.kubeconfig, self.apparmor = node, kubeconfig, apparmor
        self.host_root, self.state_dir, self.log = base / "host", base / "state", base / "agent.log"
        self.host_root.mkdir(parents=True, exist_ok=True)
        if apparmor:
            (self.host_root / SECURITYFS).mkdir(parents=True, exist_ok=True)
            (self.host_root / SECURITYFS / "profiles").touch()
        self.seccomp_root = self.host_root / "var/lib/kubelet/seccomp/secprofiles"
        self.process: subprocess.Popen[bytes] | None = None
        self.health_port = 0

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30) -> AgentProcess:
        """Start it (again) and wait until its health endpoint is listening."""
        argv = [sys.executable, "-m", "secprofiles.agent", "--node-name", self.node, "--host-root",
                str(self.host_root), "--state-dir", str(self.state_dir), "--kubeconfig", str(self.kubeconfig),
                "--health-port", "0", "--apparmor-loader", "recording" if self.apparmor else "kernel"]
        env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), "PYTHONUNBUFFERED": "1"}
        start = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stderr=log, stdout=log, env=env)
        deadline = time.monotonic() + timeout
        while (port := self._port(start)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.node}: no health port after {timeout}s\n{self.tail()}")
            time.sleep(0.05)
        self.health_port = port
        return self

    def _port(self, offset: int) -> int | None:
        assert self.running, self.tail()
        for record in self.records(offset):
            if record.get("endpoint") == "health":
                return int(record["port"])
        return None

    def records(self, offset: int = 0) -> list[dict[str, object]]:
        """The JSON log records written from byte ``offset`` on."""
        if not self.log.exists():
            return []
        with self.log.open() as handle:
            handle.seek(offset)
            return [json.loads(line) for line in handle if line.startswith("{") and line.rstrip().endswith("}")]

    def http(self, path: str) -> int:
        """The status code of a GET on its health endpoint (0 if it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM of the agent process, in KiB."""
        assert self.process is not None
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields

    def kill(self) -> None:
        """SIGKILL: a crash at whatever it was doing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def file(self, namespace: str, name: str) -> Path:
        """Where a SeccompProfile's file lands on this node."""
        return self.seccomp_root / namespace / f"{name}.json"

    def tail(self, lines: int = 40) -> str:
        """The end of its log."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
