"""Rendered seccomp files are enforced by a real runtime: podman + runc."""

from __future__ import annotations

from pathlib import Path

import pytest

from secprofiles.cli import main as cli
from secprofiles.model.evaluate import evaluate_sync
from tests.conftest import REPO, SEEDS, missing_install
from tests.runtime.conftest import Runner
from tests.unit.model.test_libseccomp_filter import multiplexed_socket_rule

pytestmark = pytest.mark.runtime
CHMOD = "touch /tmp/f && chmod 600 /tmp/f; echo rc=$?"


def imported_and_rendered(tmp_path: Path, capsys: pytest.CaptureFixture[str], source: Path, name: str) -> Path:
    assert cli.main(["import", str(source), "--name", name]) == 0
    cr = tmp_path / f"{name}.yaml"
    cr.write_text(capsys.readouterr().out)
    assert cli.main(["lint", str(cr)]) == 0
    capsys.readouterr()
    assert cli.main(["render", str(cr)]) == 0
    rendered = tmp_path / f"{name}.json"
    rendered.write_text(capsys.readouterr().out)
    return rendered


def test_unconfined_chmod_succeeds(podman: Runner) -> None:
    result = podman(CHMOD)
    assert result.stdout.strip() == "rc=0", result.stderr


@pytest.mark.parametrize("seed", ["prevent-chmod.legacy.json", "prevent-chmod.json"])
def test_prevent_chmod_from_both_source_forms_blocks_chmod(
        podman: Runner, tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: str) -> None:
    profile = imported_and_rendered(tmp_path, capsys, SEEDS / seed, "prevent-chmod")
    result = podman(CHMOD, seccomp=profile)
    assert result.stdout.strip() == "rc=1"
    assert "Operation not permitted" in result.stderr


@pytest.mark.parametrize("bundled", ["prevent-chmod.yaml", "prevent-chmod-legacy.yaml", "runtime-default-no-chmod.yaml"])
def test_bundled_chmod_profiles_block_chmod(
        podman: Runner, tmp_path: Path, capsys: pytest.CaptureFixture[str], bundled: str) -> None:
    assert cli.main(["render", str(REPO / "profiles/seccomp" / bundled)]) == 0
    rendered = tmp_path / "p.json"
    rendered.write_text(capsys.readouterr().out)
    result = podman("echo started; " + CHMOD, seccomp=rendered)
    assert result.stdout.split() == ["started", "rc=1"], result.stderr


def test_podmans_own_default_profile_imports_lints_and_runs_a_shell(
        podman: Runner, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = Path("/usr/share/containers/seccomp.json")
    if not source.exists():
        pytest.skip(missing_install("/usr/share/containers/seccomp.json (golang-github-containers-common)"))
    rendered = imported_and_rendered(tmp_path, capsys, source, "podman-default")
    result = podman("echo hello from busybox; ls / >/dev/null && echo listed", seccomp=rendered)
    assert result.stdout.split("\n")[:2] == ["hello from busybox", "listed"], result.stderr


def test_default_action_errno_really_denies(podman: Runner, tmp_path: Path) -> None:
    deny_all = tmp_path / "deny.json"
    deny_all.write_text('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}')
    result = podman("echo never", seccomp=deny_all)
    assert result.returncode != 0 and "never" not in result.stdout


def test_a_filter_libseccomp_refuses_really_fails_the_container(podman: Runner, tmp_path: Path) -> None:
    """What the model's libseccomp check refuses, runc refuses too: rendered here without that check."""
    refused = multiplexed_socket_rule(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])
    assert evaluate_sync(refused).findings
    rendered = evaluate_sync(refused, native_checks=False).rendered
    assert rendered is not None
    path = tmp_path / "refused.json"
    path.write_bytes(rendered.content)
    result = podman("echo started", seccomp=path)
    assert result.returncode != 0 and "started" not in result.stdout
    assert "seccomp" in result.stderr.lower(), result.stderr
    accepted = evaluate_sync(multiplexed_socket_rule(["SCMP_ARCH_X86_64"])).rendered
    assert accepted is not None
    path.write_bytes(accepted.content)
    assert podman("echo started", seccomp=path).stdout.strip() == "started"
