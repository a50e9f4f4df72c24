"""A real container runtime: podman + runc running a busybox image built from Debian's busybox-static
(``devtools.busybox``); and what recording needs on top: root, for the audit multicast group and a fresh audit
session."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.busybox import BUSYBOX, IMAGE, PODMAN_RUN, build_image
from tests.conftest import cannot_run, missing_install

__all__ = ["IMAGE", "RUN", "Runner"]
RUN = PODMAN_RUN
Runner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """Run a shell script in busybox under podman+runc, optionally with a seccomp profile file (and podman options)."""
    if shutil.which("podman") is None or shutil.which("runc") is None or not BUSYBOX.exists():
        pytest.skip(missing_install("podman, runc or busybox-static"))
    build_image(tmp_path_factory.mktemp("image"))
    probe = subprocess.run([*RUN, IMAGE, "/bin/busybox", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        # Plain pytest skips (a sandbox may forbid containers); strict mode fails: CI's machine runs them.
        pytest.skip(cannot_run(f"podman + runc: not even a busybox `true` container starts: {probe.stderr.strip()}"))

    def run(script: str, seccomp: Path | None = None, *options: str) -> subprocess.CompletedProcess[str]:
        profile = ["--security-opt", f"seccomp={seccomp or 'unconfined'}"]
        return subprocess.run([*RUN, *options, *profile, IMAGE, "sh", "-c", script], capture_output=True, text=True,
                              timeout=300)

    return run


@pytest.fixture(scope="session")
def recording_possible() -> None:
    """Root: what recording needs (CAP_AUDIT_READ, a fresh audit session); busybox for the workloads."""
    if os.geteuid() != 0:
        pytest.skip(cannot_run("recording needs root (CAP_AUDIT_READ, a fresh audit session)"))
    if not BUSYBOX.exists():
        pytest.skip(missing_install("busybox-static"))
