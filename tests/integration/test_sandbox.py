"""``make sandbox`` in its short mode: ``python -m devtools.sandbox --once`` starts its own control plane,
operator (serving the pod-binding webhook) and two agents, waits until every bundled profile settled and the demo
ProfileBinding counted the pod the webhook bound, prints the table, cleans up, exits 0."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from devtools import sandbox
from devtools.commands import python_env
from devtools.realnode import prerequisites
from secprofiles.model.evaluate import evaluate_sync
from tests.conftest import REPO, missing_install

pytestmark = pytest.mark.controlplane


def _field(output: str, label: str) -> object:
    """The JSON value printed after ``label`` on its own line of the sandbox's output."""
    line = next(line for line in output.splitlines() if line.strip().startswith(label))
    return json.loads(line.split(": ", 1)[1])


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes (other than this one) that contain ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        if cmdline.parent.name == str(os.getpid()):
            continue
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        if text in argv:
            found.append(argv)
    return found


def test_sandbox_once_settles_every_bundled_profile_and_cleans_up(devcluster: object, tmp_path: Path) -> None:
    # ``devcluster`` only guarantees the control-plane binary is built (the sandbox starts its own cluster).
    base = tmp_path / "sandbox"
    result = subprocess.run([sys.executable, "-m", "devtools.sandbox", "--once", "--timeout", "90", "--simulated",
                             "--dir", str(base)], capture_output=True, text=True, env=python_env(), cwd=REPO,
                            timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-4000:]
    assert "simulated nodes (--simulated;" in result.stderr  # it says why it does not use a real node
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

    # Bound by the webhook: the pod the sandbox sends sets no seccomp profile, the stored one has the binding's,
    # recorded with the content hash of profiles/seccomp/prevent-chmod.yaml as rendered.
    assert "seccompProfile" not in json.dumps(sandbox.demo_pod())
    assert _field(table, "containers[demo].securityContext.seccompProfile:") == {
        "type": "Localhost", "localhostProfile": "secprofiles/demo/prevent-chmod.json"}
    rendered = evaluate_sync(yaml.safe_load((REPO / "profiles/seccomp/prevent-chmod.yaml").read_text())).rendered
    assert rendered is not None
    assert _field(table, "metadata.annotations[secprofiles.io/profiles]:") == {
        "demo": [f"SeccompProfile/demo/prevent-chmod@{rendered.content_hash}"]}
    assert "ProfileBinding demo/demo-prevent-chmod: boundPods 1" in table
    assert "created pod demo/demo without a seccomp profile" in result.stderr

    # Clean-up: the directory, every process started under it (control plane, operator, agents), the webhook port.
    assert not base.exists(), "the sandbox removes its directory"
    assert "devcluster: stopped" in result.stderr
    assert not _processes_mentioning(str(base)), _processes_mentioning(str(base))
    port = re.search(r"serving the pod-binding webhook on https://127\.0\.0\.1:(\d+)", result.stderr)
    assert port, result.stderr[-4000:]
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(port[1]))) != 0, "the webhook port is still served"


@pytest.mark.realnode
@pytest.mark.timeout(1500)  # on a fresh machine the sandbox builds the images first (base, operator, agent)
def test_sandbox_once_on_the_real_node_shows_the_documents_pod_failing_with_eperm(devcluster: object) -> None:
    # Where the machine can run a real node, the sandbox does: the document's pod, bound by the webhook the operator
    # pods serve, ends Error with chmod's EPERM from its log next to the profile table; the machine is left as before.
    if missing := prerequisites():
        pytest.skip(missing_install("a real node needs " + "; ".join(missing)))
    # a short directory: the kubelet's unix sockets live under it
    base = Path(tempfile.mkdtemp(prefix="sb-", dir="/var/tmp")) / "sandbox"
    result = subprocess.run([sys.executable, "-m", "devtools.sandbox", "--once", "--timeout", "120",
                             "--dir", str(base)], capture_output=True, text=True, env=python_env(), cwd=REPO,
                            timeout=1400, check=False)
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-4000:]
    out = result.stdout
    assert "realnode (no AppArmor)" in out
    assert re.search(r"^seccomp/demo/prevent-chmod\s+Installed\s+Installed \[/\S+/kubelet/seccomp/secprofiles/demo/"
                     r"prevent-chmod\.json\]", out, re.M), out
    assert re.search(r"^apparmor/k8s-apparmor-example-deny-write\s+Error\s+Error: AppArmor not enabled on node", out,
                     re.M), out
    assert _field(out, "containers[demo].securityContext.seccompProfile:") == {
        "type": "Localhost", "localhostProfile": "secprofiles/demo/prevent-chmod.json"}
    assert re.search(r"^demo\s+0/1\s+Error\s", out, re.M), out
    assert "chmod: /etc/hostname: Operation not permitted" in out
    assert "the machine's state equals the snapshot before the start" in result.stderr
    assert not base.exists() and not _processes_mentioning(str(base))
    base.parent.rmdir()
