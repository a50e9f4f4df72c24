"""Kubernetes plumbing that knows no profile: the API client, API paths of built-in kinds, certificates, JSON logs
and the clock."""
