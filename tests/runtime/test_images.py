"""The images ``make images`` builds hold only what they run: the product's package and its runtime dependencies,
``apparmor_parser``; no test extras (the ``test`` optional dependencies of pyproject.toml), no developer tooling
(``devtools``, ``bench``, ``tests``), no compilers or VCS. Their sizes are reported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable

import pytest

from devtools import images
from tests.conftest import REPO, missing_install

pytestmark = pytest.mark.runtime

INSPECT = """
import importlib.metadata as m, importlib.util as u, json, os, shutil, sys
import secprofiles
root = os.path.dirname(secprofiles.__file__)
print(json.dumps({
    "distributions": sorted({d.metadata["Name"].lower().replace("_", "-") for d in m.distributions()}),
    "importable": {name: u.find_spec(name) is not None for name in ("devtools", "bench", "tests", "pytest")},
    "package_files": [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs],
    "tools": {tool: shutil.which(tool) for tool in ("apparmor_parser", "gcc", "go", "git", "pip3", "podman")},
    "user": os.getuid(),
}))
"""


def _test_extras() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")
            for spec in project["optional-dependencies"]["test"]}


@pytest.fixture(scope="module")
def built() -> images.Built:
    if shutil.which("podman") is None:
        pytest.skip(missing_install("podman"))
    try:
        return images.build_all(product=True, node=False)
    except images.ImageBuildError as error:
        pytest.fail(f"make images failed: {error}", pytrace=False)


@pytest.mark.parametrize("image", sorted(images.PRODUCT_IMAGES.values()))
def test_image_holds_only_what_it_runs(built: images.Built, image: str, report_figure: Callable[[str], None]) -> None:
    result = subprocess.run(["podman", "run", "--rm", "--network", "none", *images.PODMAN_ULIMITS,
                             "--entrypoint", "python", image, "-c", INSPECT], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    extras = _test_extras()
    assert extras and not extras & set(found["distributions"]), extras & set(found["distributions"])
    assert "secprofiles" in found["distributions"] and "kopf" in found["distributions"]
    assert found["importable"] == {"devtools": False, "bench": False, "tests": False, "pytest": False}
    assert not [f for f in found["package_files"] if "test" in f.split("/")[0] or f.startswith("devtools")]
    assert found["tools"]["apparmor_parser"], "apparmor_parser is what both images need from Debian"
    assert not any(found["tools"][tool] for tool in ("gcc", "go", "git", "podman"))
    assert found["user"] == (65532 if image == images.OPERATOR_IMAGE else 0)
    size = images.image_size(image)
    report_figure(f"{image}: {size / 1e6:.1f} MB on base {built.base}; {len(found['distributions'])} Python "
                  f"distributions, none of the {len(extras)} test extras")
