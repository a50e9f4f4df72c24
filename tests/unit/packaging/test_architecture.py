"""The layers of ``pyproject.toml``'s import-linter contracts hold, and the check fails when one is broken.

``make lint`` runs ``lint-imports`` on the tree; here a copy of the tree gets one forbidden import at a time."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

BROKEN = {
    "the model imports Kubernetes plumbing": ("src/secprofiles/model/findings.py", "import secprofiles.kube.clock",
                                              "secprofiles.model is not allowed to import secprofiles.kube"),
    "the agent imports the controller": ("src/secprofiles/agent/taint.py", "import secprofiles.controller.state",
                                         "secprofiles.agent is not allowed to import secprofiles.controller"),
    "plumbing imports the model": ("src/secprofiles/kube/clock.py", "import secprofiles.model.keys",
                                   "secprofiles.kube is not allowed to import secprofiles.model"),
    "shipped code imports dev tooling": ("src/secprofiles/cli/yamlout.py", "import devtools.ports",
                                         "secprofiles is not allowed to import devtools"),
    "the recorder core imports the node side": ("src/secprofiles/recording/synthesis.py",
                                                "import secprofiles.agent.recorder",
                                                "secprofiles.recording is not allowed to import secprofiles.agent"),
    "the recorder core imports the API path table": ("src/secprofiles/recording/report.py",
                                                     "import secprofiles.resources",
                                                     "secprofiles.recording is not allowed to import "
                                                     "secprofiles.resources"),
}


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    lint = shutil.which("lint-imports")
    assert lint, "lint-imports is missing: run `pip install -e .[test]` (scripts/install.sh)"
    return subprocess.run([lint, "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tree / 'src'}:{tree}"},
                          capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for part in ("src", "devtools", "bench", "tests"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = _lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("case", BROKEN)
def test_a_forbidden_import_breaks_the_check(tree: Path, case: str) -> None:
    module, line, message = BROKEN[case]
    with (tree / module).open("a") as handle:
        handle.write(f"\n{line}  # noqa\n")
    result = _lint_imports(tree)
    assert result.returncode != 0
    assert message in result.stdout, result.stdout
