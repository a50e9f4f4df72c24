"""The designs the scale benchmark compares: the checkout itself, and the one before the node report was redesigned.

A design is a checkout whose operator, fleet of agents and CRDs run against a control plane of their own. The
baseline is an older commit of this repository, exported once (``git archive``) into the cache (outside the work
tree, keyed by the commit); the current design is this checkout.
"""

from __future__ import annotations

import fcntl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devtools.build import cache_root
from devtools.commands import REPO

#: The last commit whose NodeProfileStatus holds one entry per profile (``status.profiles``): issue 15's "now".
BASELINE_REVISION = "1c375b771b06fad23457d789ecf5a504cdc6ede4"


@dataclass(frozen=True)
class Design:
    """A checkout to run: its name in the figures, where it is, what it is."""

    name: str
    root: Path
    what: str

    @property
    def crds(self) -> Path:
        """The CRDs this design installs."""
        return self.root / "crds"


def current() -> Design:
    """This checkout: NodeProfileStatus digests per bucket (docs/status.md)."""
    return Design("digests", REPO, "this checkout: per-bucket digests of what each node processed, failures listed")


def baseline() -> Design:
    """The per-profile-entries design, exported (once) into the cache."""
    root = cache_root() / "bench-designs" / BASELINE_REVISION
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f"{BASELINE_REVISION}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "src").is_dir():
            partial = root.with_name(root.name + ".partial")
            subprocess.run(["rm", "-rf", str(partial)], check=True)
            partial.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE_REVISION], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(partial)], input=archive, check=True)
            partial.rename(root)
    return Design("entries", root, f"commit {BASELINE_REVISION[:7]}: one NodeProfileStatus entry per profile "
                                   "and node (status.profiles)")
