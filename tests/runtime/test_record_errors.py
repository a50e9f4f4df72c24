"""``secprofiles record`` when something is missing: a clear error naming it, exit status 1, and no file written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.commands import REPO, python_env
from secprofiles.cli import main as cli
from tests.conftest import missing_install

pytestmark = pytest.mark.runtime


def record(tmp_path: Path, *command: str, prefix: tuple[str, ...] = (),
           options: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess[str], Path]:
    output = tmp_path / "out.yaml"
    result = subprocess.run([*prefix, sys.executable, "-m", "secprofiles.cli", "record", "--name", "x", "--output",
                             str(output), *options, "--", *command], cwd=REPO, env=python_env(),
                            capture_output=True, text=True, timeout=120)
    return result, output


@pytest.fixture
def setpriv(recording_possible: None) -> str:
    path = shutil.which("setpriv")
    if path is None:
        pytest.skip(missing_install("setpriv (util-linux)"))
    return path


def test_without_cap_audit_read(tmp_path: Path, setpriv: str) -> None:
    result, output = record(tmp_path, "/bin/true", prefix=(setpriv, "--bounding-set=-audit_read", "--"))
    assert result.returncode == 1 and not output.exists()
    assert "joining the audit multicast group needs CAP_AUDIT_READ" in result.stderr, result.stderr


def test_without_a_fresh_audit_session(tmp_path: Path, setpriv: str) -> None:
    """A login uid already set and no CAP_AUDIT_CONTROL: the session cannot be made, and it says why."""
    script = f'echo 0 > /proc/self/loginuid && exec {setpriv} --bounding-set=-audit_control -- "$@"'
    result, output = record(tmp_path, "/bin/true", prefix=("/bin/sh", "-c", script, "sh"))
    assert result.returncode == 1 and not output.exists()
    assert "loginuid" in result.stderr and "CAP_AUDIT_CONTROL" in result.stderr, result.stderr


def test_outside_the_initial_network_namespace(tmp_path: Path, recording_possible: None) -> None:
    if shutil.which("unshare") is None:
        pytest.skip(missing_install("unshare (util-linux)"))
    result, output = record(tmp_path, "/bin/true", prefix=("unshare", "--net", "--"))
    assert result.returncode == 1 and not output.exists()
    assert "initial network namespace" in result.stderr, result.stderr


def test_a_failing_command_writes_nothing(tmp_path: Path, recording_possible: None) -> None:
    result, output = record(tmp_path, "/bin/busybox", "sh", "-c", "exit 3")
    assert result.returncode == 1 and not output.exists()
    assert "exited with status 3" in result.stderr


def test_a_command_that_does_not_exist(tmp_path: Path, recording_possible: None) -> None:
    result, output = record(tmp_path, "no-such-command-anywhere")
    assert result.returncode == 1 and not output.exists()
    assert "no-such-command-anywhere: command not found" in result.stderr, result.stderr


def test_a_failing_command_with_allow_failure_writes_what_it_did(
        tmp_path: Path, recording_possible: None, capsys: pytest.CaptureFixture[str]) -> None:
    result, output = record(tmp_path, "/bin/busybox", "sh", "-c", "exit 3", options=("--allow-failure",))
    assert result.returncode == 0 and output.exists(), result.stderr
    assert cli.main(["lint", str(output)]) == 0, capsys.readouterr()


def test_usage_errors_exit_2_and_write_nothing(tmp_path: Path) -> None:
    result, output = record(tmp_path)
    assert result.returncode == 2 and "no COMMAND given" in result.stderr and not output.exists()
    missing_dir = tmp_path / "no" / "such" / "dir.yaml"
    result = subprocess.run([sys.executable, "-m", "secprofiles.cli", "record", "--name", "x", "--output",
                             str(missing_dir), "--", "/bin/true"], cwd=REPO, env=python_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "no such directory" in result.stderr
