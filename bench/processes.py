"""The product's processes as the benchmarks run them: devtools' supervisor and command lines, plus the many-agent
fleet, and (``python -m bench --profile DIR``) every Python process under cProfile."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path

from devtools.commands import REPO, agent_process, operator_process, python_process
from devtools.processes import Process

#: Set by ``python -m bench --profile DIR``: every Python process runs under cProfile, one .prof file per process.
PROFILE_DIR: Path | None = None
_profiles = itertools.count()


def profiled(process: Process) -> Process:
    """``process`` under cProfile when ``PROFILE_DIR`` is set (a Python ``-m`` command line)."""
    if PROFILE_DIR is not None and process.argv[:2] == [sys.executable, "-m"]:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        stem = "".join(c if c.isalnum() else "-" for c in process.name)
        output = PROFILE_DIR / f"{next(_profiles):03d}-{stem}.prof"
        process.argv = [sys.executable, "-m", "cProfile", "-o", str(output), *process.argv[1:]]
    return process


def operator(kubeconfig: Path, log: Path, metrics_port: int, *extra: str, root: Path = REPO) -> Process:
    """The operator (of the checkout at ``root``), standalone, with metrics on ``metrics_port`` and no liveness
    endpoint."""
    return profiled(operator_process(kubeconfig, log, metrics_port=metrics_port, extra=extra, root=root))


def agent(kubeconfig: Path, node: str, base: Path, apparmor: bool) -> Process:
    """One simulated node's agent (AppArmor: the recording loader, see README)."""
    return profiled(agent_process(kubeconfig, node, base, apparmor=apparmor))


def fleet(kubeconfig: Path, base: Path, nodes: list[str], apparmor: bool, root: Path = REPO) -> Process:
    """``python -m bench.fleet`` (of the checkout at ``root``): one Agent object per node, all on one event loop
    in one process."""
    arguments = ["--kubeconfig", str(kubeconfig), "--base", str(base), *(["--apparmor"] if apparmor else []), *nodes]
    return profiled(python_process(f"fleet of {len(nodes)}", "bench.fleet", arguments, base / "fleet.log", root))


async def wait_log(process: Process, needle: str, within: float) -> None:
    """Wait until ``needle`` appears in the process's log."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        process.check()
        if process.log.exists() and needle in process.log.read_text(errors="replace"):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{process.name}: no {needle!r} in {process.log} after {within}s:\n{process.tail()}")

