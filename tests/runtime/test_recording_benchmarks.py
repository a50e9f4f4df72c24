"""The recording benchmarks (root + podman, not part of ``python -m bench``) at tiny sizes: they keep working.
Their figures mean nothing at these sizes and are not judged (README, "Recording profiles", for real runs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devtools.commands import REPO, python_env
from tests.runtime.conftest import Runner

pytestmark = pytest.mark.runtime


@pytest.mark.parametrize("arguments", [
    ["bench.recording_overhead", "--calls", "2000", "--repeat", "1"],
    ["bench.recording_memory", "--containers", "2", "--synthetic", "1,2"],
    ["bench.runtime_steps", "--runs", "1"],
], ids=lambda arguments: arguments[0])
def test_a_recording_benchmark_runs(arguments: list[str], podman: Runner, recording_possible: None) -> None:
    result = subprocess.run([sys.executable, "-m", *arguments], cwd=REPO, env=python_env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()
