# The README's commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3

.PHONY: install test test-slow lint sandbox

install:
	./scripts/install.sh

lint: install
	$(PYTHON) -m ruff check operator tests
	$(PYTHON) -m mypy

# Everything but the slow suites: unit tests, podman+runc enforcement, and the real control plane.
# SECPROFILES_STRICT_INSTALL=1: a test that would skip for a missing tool fails instead (tests/conftest.py).
test: lint
	SECPROFILES_STRICT_INSTALL=1 $(PYTHON) -m pytest -m "not slow"

# The slow, nightly-style suites (crash loops, long fuzzing).
test-slow: install
	$(PYTHON) -m pytest -m slow

# The README's first command: a local control plane, the operator and two simulated nodes, live status table.
# Ctrl-C stops and cleans up. ARGS="--once" or ARGS="--duration 60" for a short run.
sandbox: install
	PYTHONPATH=operator $(PYTHON) -m secprofiles.sandbox $(ARGS)
