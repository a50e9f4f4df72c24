"""A real container runtime: podman + runc running a busybox image built from Debian's busybox-static."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import cannot_run, missing_install

IMAGE = "localhost/secprofiles-busybox:test"
RUN = ["podman", "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
       "--runtime", "runc"]
BUSYBOX = Path("/bin/busybox")

Runner = Callable[..., subprocess.CompletedProcess[str]]


def _build_image(tmp: Path) -> None:
    archive = tmp / "busybox.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in ("sh", "chmod", "touch", "ls", "echo", "stat", "cat"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        tmpdir = tarfile.TarInfo("tmp")
        tmpdir.type, tmpdir.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(tmpdir)
    subprocess.run(["podman", "import", "--quiet", str(archive), IMAGE], check=True, capture_output=True)


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """Run a shell command in busybox under podman+runc, optionally with a seccomp profile file."""
    if shutil.which("podman") is None or shutil.which("runc") is None or not BUSYBOX.exists():
        pytest.skip(missing_install("podman, runc or busybox-static"))
    _build_image(tmp_path_factory.mktemp("image"))
    probe = subprocess.run([*RUN, IMAGE, "/bin/busybox", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        # Plain pytest skips (a sandbox may forbid containers); strict mode fails: CI's machine runs them.
        pytest.skip(cannot_run(f"podman + runc: not even a busybox `true` container starts: {probe.stderr.strip()}"))

    def run(script: str, seccomp: Path | None = None) -> subprocess.CompletedProcess[str]:
        options = ["--security-opt", f"seccomp={seccomp}"] if seccomp else ["--security-opt", "seccomp=unconfined"]
        return subprocess.run([*RUN, *options, IMAGE, "sh", "-c", script], capture_output=True, text=True, timeout=120)

    return run
