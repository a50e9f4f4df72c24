"""Security Profiles Operator resources of every version (../shared/corpus/spo), imported with
``secprofiles import``, linted, and created on the real API server with this project's CRDs: every object
written is stored unchanged (no field pruned, none refused)."""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import pytest
import yaml

from devtools.cluster import DevCluster
from devtools.objects import create_if_missing
from secprofiles.cli import lint
from secprofiles.cli import main as cli
from secprofiles.model import schema
from secprofiles.resources import resource_path
from tests.conftest import CORPUS, needs_corpus

NAMESPACE = "spo-migrated"
pytestmark = [pytest.mark.controlplane, needs_corpus]


def imported_objects(tmp_path: Any) -> tuple[list[dict[str, Any]], int]:
    objects, lint_findings = [], 0
    for path in sorted((CORPUS / "spo").iterdir()):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            cli.main(["import", str(path), "--namespace", NAMESPACE])
        assert "Traceback" not in err.getvalue(), path
        written = tmp_path / f"{path.stem}.out.yaml"
        written.write_text(out.getvalue())
        lint_findings += len(lint.lint([written], NAMESPACE).findings)
        objects += [d for d in yaml.safe_load_all(out.getvalue()) if d]
    return objects, lint_findings


def test_spo_objects_of_every_version_are_stored_by_the_api_server(
        cluster: DevCluster, tmp_path: Any, report_figure: Callable[[str], None]) -> None:
    admin = cluster.admin
    admin.call(create_if_missing, resource_path("Namespace"), {"metadata": {"name": NAMESPACE}})
    objects, lint_findings = imported_objects(tmp_path)
    # The same name can come from several files (the examples at v1, v1beta1 and v1alpha1): the last one wins.
    unique = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
    for (kind, namespace, name), obj in unique.items():
        path = resource_path(kind, namespace, name)
        admin.delete(path)
        admin.patch(path, obj, "apply", params={"fieldManager": "secprofiles-tests", "force": "true"})
        stored = admin.request("GET", path)
        assert stored["spec"] == {**_defaults(kind), **obj["spec"]}, (kind, name)
        assert {k: v for k, v in stored["metadata"].items() if k in obj["metadata"]} == obj["metadata"]
    kinds = sorted({k for k, _, _ in unique})
    report_figure(f"{len(objects)} objects imported from {len(list((CORPUS / 'spo').iterdir()))} SPO files "
                  f"({len(unique)} distinct; {', '.join(kinds)}); {len(unique)} stored by the API server unchanged; "
                  f"{lint_findings} lint findings (NOTIFY and a base profile of SPO's namespace)")
    assert kinds == sorted([schema.APPARMOR_PROFILE, schema.PROFILE_BINDING, schema.SECCOMP_PROFILE])
    assert lint_findings > 0  # the two refused files say why (checked in tests/unit/test_spo.py)


def _defaults(kind: str) -> dict[str, Any]:
    """What the CRD's schema defaults (the API server adds it)."""
    return {schema.APPARMOR_PROFILE: {"mode": "enforce"}, schema.PROFILE_BINDING: {"enforcement": "Warn", "overrideExisting": False}}.get(
        kind, {})
