"""Developer tooling, never shipped: the local Kubernetes (built from Go, cached), installing ``manifests/`` into it,
the sandbox, and what tests and benchmarks share (process supervision, command lines, waiting, ports)."""
