"""The model: what a profile is, independent of any cluster.

Validation (CRD schema, semantics, base chains, libseccomp and ``apparmor_parser`` checks), rendering, content
hashes, profile keys and the NodeProfileStatus contract. Used by the CLI, the operator and the agent alike; it
imports no Kubernetes plumbing.
"""
