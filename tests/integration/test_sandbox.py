"""``make sandbox`` in its short mode: ``python -m secprofiles.sandbox --once`` starts its own control plane,
operator and two agents, waits until every bundled profile settled, prints the table, cleans up, exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.controlplane


def test_sandbox_once_settles_every_bundled_profile_and_cleans_up(devcluster: object, tmp_path: Path) -> None:
    # ``devcluster`` only guarantees the control-plane binary is built (the sandbox starts its own cluster).
    base = tmp_path / "sandbox"
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    result = subprocess.run([sys.executable, "-m", "secprofiles.sandbox", "--once", "--timeout", "90",
                             "--dir", str(base)], capture_output=True, text=True, env=env, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-4000:]
    table = result.stdout
    lines = {line.split()[0]: line for line in table.splitlines() if line.startswith(("seccomp/", "apparmor/"))}
    assert set(lines) == {
        "seccomp/demo/audit", "seccomp/demo/prevent-chmod", "seccomp/demo/prevent-chmod-legacy",
        "seccomp/demo/runtime-default", "seccomp/demo/runtime-default-no-chmod",
        "apparmor/secprofiles-audit", "apparmor/k8s-apparmor-example-deny-write", "apparmor/secprofiles-readonly-web"}
    assert "sandbox-apparmor (AppArmor)" in table and "sandbox-seccomp (no AppArmor)" in table
    assert "Installed [/var/lib/kubelet/seccomp/secprofiles/demo/prevent-chmod.json]" in lines[
        "seccomp/demo/prevent-chmod"]
    deny_write = lines["apparmor/k8s-apparmor-example-deny-write"]
    assert "Installed [loaded (enforce)]" in deny_write and "Error: AppArmor not enabled on node" in deny_write
    assert "applied ProfileBinding demo/demo-prevent-chmod" in result.stderr
    assert not base.exists(), "the sandbox removes its directory"
    assert "devcluster: stopped" in result.stderr
