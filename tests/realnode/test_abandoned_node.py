"""A real node whose command died without its clean-up (SIGKILL: no handler runs) leaves its containers, rules,
bridge, cgroups and sysctls on the machine; the next real node cleans them before it starts, and after its own stop
the machine equals the state before the first one. Runs before the package's shared node (file order): it needs
the machine lock itself."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools import hoststate
from devtools.commands import python_env
from devtools.realcluster import RealCluster
from devtools.realnode import node_conflicts, prerequisites
from devtools.waiting import eventually
from tests.conftest import REPO, missing_install

pytestmark = [pytest.mark.realnode, pytest.mark.timeout(1500)]


def test_a_node_killed_without_clean_up_is_cleaned_by_the_next_one(report_figure: Callable[[str], None]) -> None:
    if missing := prerequisites():
        pytest.skip(missing_install("a real node needs " + "; ".join(missing)))
    base = Path(tempfile.mkdtemp(prefix="abandoned-", dir="/var/tmp"))
    before = hoststate.snapshot()
    first = subprocess.Popen([sys.executable, "-m", "devtools.realcluster", "--dir", str(base / "first")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=python_env(), cwd=REPO,
                             text=True)
    try:
        eventually(lambda: (base / "first" / "ready").exists() or first.poll() is not None, 1200,
                   "the first real node ready", interval=1)
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    time.sleep(2)  # its children got SIGTERM from the kernel (they die with their parent); shims and pods stay
    traces = node_conflicts("secprofiles0")
    assert traces, "a killed node leaves kube-proxy's chains and the bridge behind"
    second = RealCluster(base / "second")
    try:
        started = time.monotonic()
        second.start()  # cleans the first one's traces, then starts
        report_figure(f"traces of the killed node: {', '.join(traces)}; the next node cleaned them and was Ready "
                      f"in {time.monotonic() - started:.1f}s")
    finally:
        leftovers = second.stop()
    assert not leftovers, leftovers
    after = hoststate.snapshot()
    pattern = hoststate.ours_pattern(base, "secprofiles0")
    ours = [d for d in hoststate.differences(before, after, pattern) if d.ours]
    assert not ours, "\n".join(str(d) for d in ours)
    programs = second.programs
    assert not hoststate.processes_naming(base, programs), hoststate.processes_naming(base, programs)
    subprocess.run(["rm", "-rf", str(base)], check=False)
