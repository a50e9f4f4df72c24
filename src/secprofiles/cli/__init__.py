"""The ``secprofiles`` command: lint, render and import profiles without a cluster."""
