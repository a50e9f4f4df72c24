"""What ``pip install .`` ships: only the product (model, Kubernetes plumbing, controller, agent, CLI), and no
official Kubernetes client anywhere in its dependency tree. Developer tooling, benchmarks and tests stay out."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from tests.conftest import REPO

SHIPPED_PACKAGES = {"secprofiles", "secprofiles/model", "secprofiles/kube", "secprofiles/recording",
                    "secprofiles/controller", "secprofiles/controller/admission", "secprofiles/agent", "secprofiles/cli"}


def test_the_wheel_holds_the_product_and_nothing_else(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "--wheel-dir", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("secprofiles-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if n.endswith(".py")]
    assert {str(Path(n).parent) for n in code} == SHIPPED_PACKAGES
    assert not [n for n in names if re.match(r"(devtools|bench|tests)/", n)]
    assert not [n for n in code if re.search(r"sandbox|devcluster|cluster\.py|install\.py", n)], code
    # The data the model reads at run time: every CRD and the bundled profiles.
    assert {Path(n).name for n in names if "/data/crds/" in n} == {p.name for p in (REPO / "crds").glob("*.yaml")}
    assert any("/data/profiles/seccomp/runtime-default.yaml" in n for n in names)
    assert "secprofiles/recording/data/runtime-syscalls.yaml" in names  # the measured runtime syscalls


def _requirements(distribution: str, seen: set[str]) -> set[str]:
    """``distribution`` and everything it needs when installed without extras (as installed here)."""
    name = distribution.lower().replace("_", "-")
    if name in seen:
        return seen
    seen.add(name)
    for line in metadata.requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            _requirements(requirement.name, seen)
    return seen


def test_no_kubernetes_client_in_the_dependency_tree() -> None:
    tree = _requirements("secprofiles", set())
    assert {"kopf", "aiohttp", "jsonschema", "pyyaml"} <= tree
    assert "kubernetes" not in tree, sorted(tree)
