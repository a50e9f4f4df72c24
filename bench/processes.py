"""The product's processes as the benchmarks run them: operator, agents, and the many-agent fleet.

Each is a real subprocess with its own log file; nothing is imported from tests/.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import memory_kib

REPO = Path(__file__).resolve().parents[1]
SECURITYFS = Path("sys/kernel/security/apparmor")
#: Set by ``python -m bench --profile DIR``: every Python process runs under cProfile, one .prof file per start.
PROFILE_DIR: Path | None = None
_starts = itertools.count()


class Proc:
    """A subprocess with its log; PYTHONPATH points at this checkout."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.perf_counter() just before the fork

    def start(self) -> Proc:
        """Start it (again); the log is appended to."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO)])}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv
        if PROFILE_DIR is not None and argv[:2] == [sys.executable, "-m"]:
            PROFILE_DIR.mkdir(parents=True, exist_ok=True)
            stem = "".join(c if c.isalnum() else "-" for c in self.name)
            output = PROFILE_DIR / f"{next(_starts):03d}-{stem}.prof"
            argv = [sys.executable, "-m", "cProfile", "-o", str(output), *argv[1:]]
        with self.log.open("ab") as out:
            self.started_at = time.perf_counter()
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        return self

    @property
    def pid(self) -> int:
        """The process id (it must have been started)."""
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    def check(self) -> None:
        """Raise with the end of the log if the process has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; end of {self.log}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        """The last lines of the log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM in KiB."""
        self.check()
        return memory_kib(self.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def json_lines(self) -> list[dict[str, object]]:
        """The log's JSON lines (the agent logs JSON)."""
        records = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records


def operator(kubeconfig: Path, log: Path, metrics_port: int, *extra: str) -> Proc:
    """``python -m secprofiles.controller --standalone`` with metrics on ``metrics_port``, no liveness endpoint."""
    return Proc("operator", [sys.executable, "-m", "secprofiles.controller", "--kubeconfig", str(kubeconfig),
                             "--standalone", "--metrics-port", str(metrics_port), "--liveness", "", *extra], log)


def prepare_host(base: Path, apparmor: bool) -> Path:
    """A simulated node's host root; with ``apparmor``, the simulated securityfs the recording loader uses."""
    host = base / "host"
    host.mkdir(parents=True, exist_ok=True)
    if apparmor:
        (host / SECURITYFS).mkdir(parents=True, exist_ok=True)
        (host / SECURITYFS / "profiles").touch()
    return host


def agent(kubeconfig: Path, node: str, base: Path, apparmor: bool) -> Proc:
    """``python -m secprofiles.agent`` for one simulated node (AppArmor: the recording loader, see README)."""
    host = prepare_host(base, apparmor)
    argv = [sys.executable, "-m", "secprofiles.agent", "--node-name", node, "--host-root", str(host),
            "--state-dir", str(base / "state"), "--kubeconfig", str(kubeconfig), "--health-port", "0",
            "--apparmor-loader", "recording" if apparmor else "kernel"]
    return Proc(f"agent {node}", argv, base / "agent.log")


def fleet(kubeconfig: Path, base: Path, nodes: list[str], apparmor: bool) -> Proc:
    """``python -m bench.fleet``: one Agent object per node, all on one event loop in one process."""
    argv = [sys.executable, "-m", "bench.fleet", "--kubeconfig", str(kubeconfig), "--base", str(base),
            *(["--apparmor"] if apparmor else []), *nodes]
    return Proc(f"fleet of {len(nodes)}", argv, base / "fleet.log")


async def wait_log(proc: Proc, needle: str, within: float) -> None:
    """Wait until ``needle`` appears in the process's log."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        proc.check()
        if proc.log.exists() and needle in proc.log.read_text(errors="replace"):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{proc.name}: no {needle!r} in {proc.log} after {within}s:\n{proc.tail()}")
