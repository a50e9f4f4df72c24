"""Shared test helpers: paths to the repository's data, and the rule for tools a test needs.

A test that needs an installed tool skips with ``missing_install(...)`` as its reason, and with ``cannot_run(...)``
when the tool is installed but does not work on this machine (podman that cannot start any container). The README's
test command (``make test``) sets SECPROFILES_STRICT_INSTALL=1, which turns both skips into failures: there, a missing
or unusable tool means the install step failed, and CI must not pass by skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "tests" / "data" / "seeds"


@pytest.fixture
def repo() -> Path:
    return REPO


_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def report_figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a measured figure (cases tried, faults injected, files checked…); printed in the terminal summary."""
    def record(text: str) -> None:
        record_figure(request.config, request.node.nodeid, text)

    return record


def record_figure(config: pytest.Config, source: str, text: str) -> None:
    """Record a figure from a fixture of any scope (``source`` names where it comes from)."""
    config.stash.setdefault(_FIGURES, []).append(f"{source}: {text}")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the figures tests recorded with ``report_figure``."""
    figures = config.stash.get(_FIGURES, [])
    if figures:
        terminalreporter.section("figures")
        for line in figures:
            terminalreporter.write_line(line)


MISSING_INSTALL = "missing install step: "
CANNOT_RUN = "installed but cannot run here: "
# What strict mode adds to the failure, per skip reason prefix.
_STRICT_SKIPS = {MISSING_INSTALL: "the README's install step must provide it",
                 CANNOT_RUN: "it runs on CI's machine, so its install or setup is broken"}


def missing_install(what: str) -> str:
    """The skip reason for a test whose tool is not installed."""
    return MISSING_INSTALL + what


def cannot_run(what: str) -> str:
    """The skip reason for a test whose tool is installed but cannot work on this machine."""
    return CANNOT_RUN + what


# Real-world profiles written by others (../shared/corpus, beside the checkout in CI): read in place, never copied.
CORPUS = REPO.parent / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not (CORPUS / "SOURCES.tsv").is_file(),
                                  reason=missing_install(f"the shared corpus at {CORPUS}"))

needs_apparmor_parser = pytest.mark.skipif(
    shutil.which("apparmor_parser") is None, reason=missing_install("apparmor_parser (Debian package apparmor)"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Under SECPROFILES_STRICT_INSTALL=1, a skip for a missing or unusable tool fails the test."""
    report = yield
    if os.environ.get("SECPROFILES_STRICT_INSTALL") == "1" and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        why = next((why for prefix, why in _STRICT_SKIPS.items() if prefix in reason), None)
        if why is not None:
            report.outcome = "failed"
            report.longrepr = f"{reason} (SECPROFILES_STRICT_INSTALL=1: {why})"
    return report
