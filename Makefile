# The README's commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3

.PHONY: install test test-slow lint sandbox bench bench-quick images real-cluster

install:
	./scripts/install.sh

# ruff, mypy --strict, and the architecture's import contracts (pyproject.toml [tool.importlinter]).
lint: install
	$(PYTHON) -m ruff check src devtools bench tests
	$(PYTHON) -m mypy
	lint-imports

# Everything but the slow suites: unit tests, podman+runc enforcement, and the real control plane.
# SECPROFILES_STRICT_INSTALL=1: a test that would skip for a missing or unusable tool fails instead (tests/conftest.py).
# Then the benchmark suite in --quick mode (tiny sizes; keeps every benchmark path working, judges no figure).
test: lint
	SECPROFILES_STRICT_INSTALL=1 $(PYTHON) -m pytest -m "not slow"
	$(MAKE) bench-quick

# The slow, nightly-style suites (crash loops, long fuzzing).
test-slow: install
	$(PYTHON) -m pytest -m slow

# The README's first command: a local control plane, the operator and two simulated nodes, live status table.
# Ctrl-C stops and cleans up. ARGS="--once" or ARGS="--duration 60" for a short run.
sandbox: install
	$(PYTHON) -m devtools.sandbox $(ARGS)

# The images, built here with podman from the Containerfile (base from Debian packages when the public one cannot be
# pulled), plus the real node's pause and busybox images; prints their sizes.
images: install
	$(PYTHON) -m devtools.images $(ARGS)

# A real one-node cluster (kubelet + containerd) with secprofiles installed by `kubectl apply -k`, in the
# foreground: writes $(DIR)/kubeconfig, then $(DIR)/ready once every product pod is Ready; Ctrl-C stops and cleans.
DIR ?= $(or $(TMPDIR),/tmp)/secprofiles-real-cluster
real-cluster: install
	$(PYTHON) -m devtools.realcluster --dir $(DIR)

# The benchmark suite of issue 8 against the real local control plane: prints the table, writes bench/results.json.
# Takes ~25 minutes on 2 cores; run it on a quiet machine (results.json records the load average).
bench: install
	$(PYTHON) -m bench $(ARGS)

# The same benchmarks at tiny sizes (about 1-2 minutes); never overwrites bench/results.json.
BENCH_QUICK_OUTPUT ?= $(or $(TMPDIR),/tmp)/secprofiles-bench-quick.json
bench-quick: install
	$(PYTHON) -m bench --quick --output $(BENCH_QUICK_OUTPUT)
