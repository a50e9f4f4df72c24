"""``secprofiles record`` end to end: a busybox workload recorded on the host runs under podman + runc with the profile.

Needs root (audit multicast, a fresh audit session), podman + runc, busybox-static, and strace (an independent
oracle for the short-processes test). Each test states what it proves; figures go to the figures summary.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from devtools.busybox import EXPECTED_OUTPUT, FILES_AND_PROCESSES, NEW_SYSCALL_WORKLOADS, SHORT_PROCESSES
from devtools.commands import REPO, python_env
from secprofiles.cli import main as cli
from secprofiles.recording.command import record_command
from secprofiles.recording.syscall_sets import all_names
from tests.conftest import missing_install
from tests.runtime.conftest import Runner

pytestmark = pytest.mark.runtime
BUSYBOX_SH = ["/bin/busybox", "sh", "-c"]
Recorded = tuple[Path, Path, subprocess.CompletedProcess[str]]


def record_cli(output: Path, script: str, *options: str) -> subprocess.CompletedProcess[str]:
    """``secprofiles record`` of a busybox script, as a user runs it (this checkout's package)."""
    return subprocess.run([sys.executable, "-m", "secprofiles.cli", "record", "--name", "busybox-files",
                           "--namespace", "default", "--output", str(output), *options, "--", *BUSYBOX_SH, script],
                          cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=300)


def rendered(tmp_path: Path, profile: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """Lint (must be clean) and render ``profile``; the node file's path."""
    capsys.readouterr()
    assert cli.main(["lint", str(profile)]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert cli.main(["render", str(profile)]) == 0
    path = tmp_path / f"{profile.stem}.json"
    path.write_text(capsys.readouterr().out)
    return path


def recorded_names(profile: Path) -> set[str]:
    return set(yaml.safe_load(profile.read_text())["spec"]["syscalls"][0]["names"])


@pytest.fixture(scope="module")
def recorded_files_profile(tmp_path_factory: pytest.TempPathFactory, podman: Runner,
                           recording_possible: None) -> tuple[Path, subprocess.CompletedProcess[str]]:
    profile = tmp_path_factory.mktemp("files") / "recorded.yaml"
    result = record_cli(profile, FILES_AND_PROCESSES)
    assert result.returncode == 0, result.stderr
    assert EXPECTED_OUTPUT in result.stdout  # COMMAND kept its stdout
    return profile, result


def test_recorded_workload_runs_to_completion_in_podman(
        recorded_files_profile: tuple[Path, subprocess.CompletedProcess[str]], podman: Runner, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], report_figure: Callable[[str], None]) -> None:
    profile, result = recorded_files_profile
    names = recorded_names(profile)
    assert {"execve", "clone", "wait4", "openat", "rename", "symlink", "unlink", "mkdir", "rmdir"} <= names
    contained = podman(FILES_AND_PROCESSES, rendered(tmp_path, profile, capsys))
    assert contained.returncode == 0, contained.stderr
    assert contained.stdout.strip() == EXPECTED_OUTPUT
    report_figure(f"{result.stderr.splitlines()[0]}; runs to completion under podman + runc with that profile")


def test_without_the_runtimes_syscalls_the_container_cannot_start(
        recorded_files_profile: tuple[Path, subprocess.CompletedProcess[str]], podman: Runner, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The runtime list is needed, not decoration: the host recording alone does not let runc start it."""
    profile, _ = recorded_files_profile
    document = yaml.safe_load(profile.read_text())
    document["spec"]["syscalls"] = document["spec"]["syscalls"][:1]
    host_only = tmp_path / "host-only.yaml"
    host_only.write_text(yaml.safe_dump(document, sort_keys=False))
    contained = podman(FILES_AND_PROCESSES, rendered(tmp_path, host_only, capsys))
    assert contained.returncode != 0 and EXPECTED_OUTPUT not in contained.stdout


@pytest.mark.parametrize("workload", sorted(NEW_SYSCALL_WORKLOADS))
def test_a_syscall_the_recording_never_saw_is_denied_and_works_unconfined(
        recorded_files_profile: tuple[Path, subprocess.CompletedProcess[str]], podman: Runner, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], workload: str) -> None:
    profile, _ = recorded_files_profile
    script, needs = NEW_SYSCALL_WORKLOADS[workload]
    assert not needs & recorded_names(profile), "precondition: the first workload never made it"
    unconfined = podman(script)
    assert unconfined.stdout.strip() == "made", unconfined.stderr
    confined = podman(script, rendered(tmp_path, profile, capsys))
    assert "made" not in confined.stdout
    assert "Operation not permitted" in confined.stderr, confined.stderr


def test_kill_process_default_action_kills_on_an_unrecorded_syscall(
        podman: Runner, tmp_path: Path, capsys: pytest.CaptureFixture[str], recording_possible: None) -> None:
    profile = tmp_path / "kill.yaml"
    result = record_cli(profile, FILES_AND_PROCESSES, "--default-action", "SCMP_ACT_KILL_PROCESS")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(profile.read_text())["spec"]["defaultAction"] == "SCMP_ACT_KILL_PROCESS"
    path = rendered(tmp_path, profile, capsys)
    assert podman(FILES_AND_PROCESSES, path).stdout.strip() == EXPECTED_OUTPUT
    script, _ = NEW_SYSCALL_WORKLOADS["chroot"]
    killed = podman(script + "; echo after", path)
    assert "made" not in killed.stdout and "after" in killed.stdout  # the chroot process died, the shell went on


def _strace_names(script: str, workdir: Path) -> set[str]:
    trace = workdir / "strace.out"
    subprocess.run(["strace", "-f", "-qq", "-o", str(trace), *BUSYBOX_SH, script, "sh", str(workdir)], check=True,
                   capture_output=True, timeout=300)
    names = set()
    for line in trace.read_text().splitlines():
        match = re.match(r"\d+\s+([a-z0-9_]+)\(", line)
        if match:
            names.add(match.group(1))
    return names


def test_200_short_processes_lose_no_syscall_and_no_process(tmp_path: Path, recording_possible: None,
                                                            report_figure: Callable[[str], None]) -> None:
    if shutil.which("strace") is None:
        pytest.skip(missing_install("strace (the independent oracle; Debian package strace)"))
    recorded_dir, traced_dir = tmp_path / "recorded", tmp_path / "traced"
    recorded_dir.mkdir()
    traced_dir.mkdir()
    recording = asyncio.run(record_command([*BUSYBOX_SH, SHORT_PROCESSES, "sh", str(recorded_dir)]))
    pids = {int(p) for p in (recorded_dir / "pids").read_text().split()}
    assert recording.returncode == 0 and len(pids) == 200
    assert pids <= recording.pids, f"{len(pids - recording.pids)} of the 200 processes left no record"
    recorded = set(all_names(recording.syscalls.report()))
    oracle = _strace_names(SHORT_PROCESSES, traced_dir)
    assert len(oracle) > 20
    assert oracle - recorded == set(), f"strace saw what the recording lost: {sorted(oracle - recorded)}"
    report_figure(f"{len(recording.pids)} processes, {recording.records} records, {len(recorded)} syscalls "
                  f"recorded; strace -f saw {len(oracle)}, none missing; recorded beyond strace's run: "
                  f"{sorted(recorded - oracle)}")
