"""Shared test helpers: paths to the repository's data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "tests" / "data" / "seeds"


@pytest.fixture
def repo() -> Path:
    return REPO
