# The README's commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3

.PHONY: install test test-slow lint

install:
	./scripts/install.sh

lint: install
	$(PYTHON) -m ruff check operator tests
	$(PYTHON) -m mypy

# Everything but the slow suites: unit tests, podman+runc enforcement, and the real control plane.
test: lint
	$(PYTHON) -m pytest -m "not slow"

# The slow, nightly-style suites (crash loops, long fuzzing).
test-slow: install
	$(PYTHON) -m pytest -m slow
