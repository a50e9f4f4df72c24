"""The image build context: everything the Containerfile copies gets through .containerignore/.dockerignore, and
the modules its RUN steps import exist (both broke silently when the package moved to src/; found building the
images for the real node, issue 14)."""

from __future__ import annotations

import importlib.util
import re

import pytest

from tests.conftest import REPO

CONTAINERFILE = (REPO / "Containerfile").read_text()


def _copied_sources() -> list[str]:
    sources = []
    for line in CONTAINERFILE.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    return sources


@pytest.mark.parametrize("ignore_file", [".containerignore", ".dockerignore"])
def test_every_copied_path_is_in_the_build_context(ignore_file: str) -> None:
    lines = [line.strip() for line in (REPO / ignore_file).read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "the context is an allow-list"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {source.rstrip("/") for source in _copied_sources()}
    assert copied, "no COPY found"
    assert copied <= allowed, f"{ignore_file} drops {sorted(copied - allowed)}"
    assert all((REPO / path).exists() for path in allowed), "an allowed path that does not exist"


def test_modules_the_build_imports_exist() -> None:
    modules = re.findall(r"\bimport (secprofiles[\w.]*)", CONTAINERFILE)
    assert modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module
