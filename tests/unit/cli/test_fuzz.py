"""Fuzzing the model and ``secprofiles lint`` with generated objects (valid ones, and valid ones with one
hostile mutation): no traceback, exit code 0 exactly when the model accepts, every finding names a field of
the object, and every accepted seccomp profile renders to a file libseccomp compiles the way runc does.

Default suite: a fixed, derandomized sample; ``-m slow`` runs ten times as many cases.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secprofiles.cli import lint
from secprofiles.cli import main as cli
from secprofiles.model.evaluate import evaluate_sync
from tests.oracles import check_outcome, compile_with_libseccomp
from tests.strategies import Case, cases

FAST_CASES, SLOW_CASES = 1000, 15000


def _settings(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))


def lint_in_process(path: Path) -> tuple[int, dict, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["lint", "--output", "json", str(path)])
    return code, json.loads(out.getvalue()), err.getvalue()


def run_cli_fuzz(examples: int, tmp_path: Path, report_figure: Callable[[str], None]) -> None:
    counts: Counter[str] = Counter()
    path = tmp_path / "case.yaml"

    @_settings(examples)
    @given(cases())
    def one(case: Case) -> None:
        counts["cases"] += 1
        counts[f"{case.obj['kind']}"] += 1
        text = yaml.safe_dump(case.obj, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        obj = yaml.safe_load(text)  # what the CLI reads
        outcome = evaluate_sync(obj)
        counts["rejected" if check_outcome(obj, outcome) else "accepted"] += 1
        code, report, err = lint_in_process(path)
        assert "Traceback" not in err
        assert code == (1 if outcome.findings else 0), (case, outcome.findings, report)
        assert {(f["field"], f["message"]) for f in report["findings"]} == \
            {(f.field, f.message) for f in outcome.findings}
        for finding in report["findings"]:
            assert finding["line"] >= 1 and finding["kind"] == obj["kind"]

    one()
    assert counts["accepted"] >= counts["cases"] // 10 and counts["rejected"] >= counts["cases"] // 2, counts
    report_figure(f"{counts['cases']} generated objects through the model and `secprofiles lint` "
                  f"({counts['SeccompProfile']} seccomp, {counts['AppArmorProfile']} AppArmor, "
                  f"{counts['ProfileBinding']} bindings): {counts['accepted']} accepted, "
                  f"{counts['rejected']} rejected, 0 tracebacks")


def test_generated_objects_through_model_and_lint(tmp_path: Path, report_figure: Callable[[str], None]) -> None:
    run_cli_fuzz(FAST_CASES, tmp_path, report_figure)


@pytest.mark.slow
def test_generated_objects_through_model_and_lint_nightly(
        tmp_path: Path, report_figure: Callable[[str], None]) -> None:
    run_cli_fuzz(SLOW_CASES, tmp_path, report_figure)


def test_generated_files_through_the_real_command(tmp_path: Path, report_figure: Callable[[str], None]) -> None:
    """The installed entry point as a subprocess, a file of many generated documents per call."""
    batches: list[list[Case]] = []

    @_settings(12)
    @given(st.lists(cases(), min_size=10, max_size=25))
    def collect(batch: list[Case]) -> None:
        seen: set[tuple[str, str]] = set()
        unique = []
        for case in batch:  # lint reports a second object of the same kind and name as a duplicate
            meta = case.obj.get("metadata")
            key = (case.obj["kind"], str(meta.get("name") if isinstance(meta, dict) else None))
            if key not in seen:
                seen.add(key)
                unique.append(case)
        for case in unique:  # one SeccompProfile per file is the others' "sibling" base
            if case.obj["kind"] == "SeccompProfile" and isinstance(case.obj.get("metadata"), dict):
                case.obj["metadata"]["name"] = "sibling"
                break
        batches.append(unique)

    collect()
    command = shutil.which("secprofiles")
    assert command, "the secprofiles command is not installed: run `pip install -e .[test]` (scripts/install.sh)"
    documents = 0
    for number, batch in enumerate(batches):
        path = tmp_path / f"batch-{number}.yaml"
        path.write_text(yaml.safe_dump_all([c.obj for c in batch], sort_keys=False), encoding="utf-8")
        objs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        specs = {o["metadata"].get("name"): o.get("spec") for o in objs
                 if o["kind"] == "SeccompProfile" and isinstance(o.get("metadata"), dict)}
        rejected = sum(bool(evaluate_sync(obj, lambda ns, name, specs=specs: specs.get(name)).findings) for obj in objs)
        result = subprocess.run([command, "lint", str(path)], capture_output=True, text=True, timeout=120)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == (1 if rejected else 0), (result.stdout, result.stderr)
        # The same findings, in the same text, as the in-process run whose fields the fuzz test checks.
        assert result.stdout.splitlines() == [str(f) for f in lint.lint([path]).findings]
        documents += len(objs)
    report_figure(f"{len(batches)} real `secprofiles lint` runs over {documents} generated documents, 0 tracebacks")


def test_same_conditions_with_two_actions_are_refused_and_a_later_layer_replaces_them() -> None:
    """Found by the nightly fuzz: libseccomp (so runc) refuses two rules for one syscall with the same argument
    conditions and different actions (EEXIST); the model used to accept them."""
    args = [{"index": 0, "op": "SCMP_CMP_NE", "value": 0}]
    both = [{"names": ["read"], "action": "SCMP_ACT_KILL", "args": args},
            {"names": ["read"], "action": "SCMP_ACT_KILL_PROCESS", "args": args}]
    obj = {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
           "metadata": {"name": "p", "namespace": "default"},
           "spec": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": both}}
    (finding,) = evaluate_sync(obj).findings
    assert finding.field == "spec.syscalls[1].names[0]" and "same argument conditions" in finding.message
    base = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": both[:1]}
    obj["spec"] = {"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": "base", "syscalls": both[1:]}
    rendered = evaluate_sync(obj, lambda ns, name: base if name == "base" else None).rendered
    assert rendered is not None
    assert [r["action"] for r in json.loads(rendered.content)["syscalls"]] == ["SCMP_ACT_KILL_PROCESS"]
    compile_with_libseccomp(rendered.content)


def test_an_invalid_base_document_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    """Found by review of the fuzz gaps: lint read a schema-invalid sibling base and crashed."""
    path = tmp_path / "two.yaml"
    path.write_text("apiVersion: secprofiles.io/v1alpha1\nkind: SeccompProfile\nmetadata: {name: a}\n"
                    "spec: {defaultAction: SCMP_ACT_ALLOW, baseProfileName: b}\n---\n"
                    "apiVersion: secprofiles.io/v1alpha1\nkind: SeccompProfile\nmetadata: {name: b}\n"
                    "spec: {defaultAction: SCMP_ACT_ALLOW, syscalls: [{names: 5, action: SCMP_ACT_ERRNO}]}\n")
    code, report, err = lint_in_process(path)
    assert code == 1 and "Traceback" not in err
    assert {(f["name"], f["field"]) for f in report["findings"]} == {("a", "spec.baseProfileName"),
                                                                      ("b", "spec.syscalls[0].names")}


def test_rules_that_hang_libseccomp_are_refused() -> None:
    """Found by the nightly fuzz: libseccomp 2.5.4 never returns from adding the second of two rules for one
    syscall that repeat a non-equality condition and differ elsewhere (runc would hang creating the container)."""
    def rule(index: int) -> dict:
        return {"names": ["chmod"], "action": "SCMP_ACT_TRAP",
                "args": [{"index": 2, "op": "SCMP_CMP_GT", "value": 5}, {"index": index, "op": "SCMP_CMP_EQ", "value": 1}]}

    obj = {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
           "metadata": {"name": "p", "namespace": "default"},
           "spec": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule(4), rule(5)]}}
    (finding,) = evaluate_sync(obj).findings
    assert finding.field == "spec.syscalls" and "libseccomp" in finding.message
    for arg in (a for r in obj["spec"]["syscalls"] for a in r["args"]):
        arg["op"] = "SCMP_CMP_EQ"
    rendered = evaluate_sync(obj).rendered
    assert rendered is not None
    compile_with_libseccomp(rendered.content)
