"""The ``secprofiles`` command: lint, render, import and record profiles without a cluster."""
