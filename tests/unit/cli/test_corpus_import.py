"""``secprofiles import`` + lint over real profiles written by others (../shared/corpus, read in place).

Figures, printed in the summary: how many import and lint clean, how many are refused (each refusal names a
line and the rule, or is a whole-file rule such as the size limit), and crashes (must be 0). AppArmor is
counted twice: against the model's own rules (what secprofiles decides, whatever parser a node has) and with
this machine's ``apparmor_parser`` compiling too (Debian bookworm's 3.0.8: profiles written for AppArmor 4/5 or
for abstractions this machine does not ship cannot compile here, nor on nodes with the same parser).
"""

from __future__ import annotations

import asyncio
import io
import re
from collections import Counter
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from secprofiles.cli import importer, lint
from secprofiles.cli import main as cli
from secprofiles.model import apparmor_parser, syscalls
from secprofiles.model.evaluate import evaluate_sync
from tests.conftest import CORPUS, needs_apparmor_parser, needs_corpus

LINE_AND_RULE = re.compile(r"line \d+: \S")
WHOLE_POLICY_RULES = ("the limit is", "at most 65536", "defines no profile", "top-level profiles")


def import_file(path: Path) -> importer.Imported:
    recognised = importer.recognise(path.read_text(encoding="utf-8"))
    if recognised.format == importer.SECCOMP_JSON:
        return importer.import_seccomp(recognised.text, importer.dns_name(path.stem), "corpus",
                                       syscalls.GO_ARCH_TO_OCI["amd64"])
    assert recognised.format == importer.APPARMOR_TEXT, path
    return importer.import_apparmor(recognised.text, None)


@needs_corpus
def test_apparmor_corpus_imports_and_lints_clean_by_the_models_rules(report_figure: Callable[[str], None]) -> None:
    files = sorted((CORPUS / "apparmor").iterdir())
    outcome: Counter[str] = Counter()
    refusals: dict[str, list[str]] = {}
    for path in files:
        try:
            result = import_file(path)
            findings = evaluate_sync(result.obj, native_checks=False).findings
        except importer.UnsupportedInputError as error:
            outcome["refused"] += 1
            refusals[path.name] = [str(error)]
            continue
        except Exception as error:  # a crash is a figure, and fails the test below
            outcome["crashed"] += 1
            refusals[path.name] = [f"CRASH {type(error).__name__}: {error}"]
            continue
        outcome["clean" if not findings else "refused"] += 1
        if findings:
            refusals[path.name] = [str(f) for f in findings]
    report_figure(f"AppArmor corpus, model's rules: {outcome['clean']} of {len(files)} import and lint clean, "
                  f"{outcome['refused']} refused with a reason, {outcome['crashed']} crashed; refused: "
                  + "; ".join(f"{name}: {reasons[0]}" for name, reasons in refusals.items()))
    assert outcome["crashed"] == 0, refusals
    for name, reasons in refusals.items():
        assert all(LINE_AND_RULE.search(r) or any(w in r for w in WHOLE_POLICY_RULES) for r in reasons), name
    assert outcome["clean"] >= 0.9 * len(files), refusals


@needs_corpus
@needs_apparmor_parser
def test_apparmor_corpus_through_the_command_with_this_machines_parser(
        tmp_path: Path, report_figure: Callable[[str], None]) -> None:
    """The real commands, ``import`` then ``lint``, with ``apparmor_parser`` as the oracle. Its answers never
    contradict the model's checks (no include or name the checks allowed is refused by ``-p``/``-N``); what it
    refuses is syntax or files this parser version does not have."""
    files = sorted((CORPUS / "apparmor").iterdir())
    outcome: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for path in files:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(["import", str(path)])
        assert "Traceback" not in err.getvalue(), path
        if code == 0:
            written = tmp_path / f"{path.name}.yaml"
            written.write_text(out.getvalue())
            report = lint.lint([written])
            assert report.findings == [], (path, report.findings)
            outcome["clean"] += 1
            continue
        outcome["refused"] += 1
        problems = [line for line in err.getvalue().splitlines() if not line.startswith("note:")]
        assert problems, path
        text = " ".join(problems)
        assert "the policy defines profiles" not in text and "the parser includes" not in text, (path, text)
        if "apparmor_parser rejected" in text:
            kind = ("abi or abstraction missing here" if "Could not open" in text else
                    "variable from a newer AppArmor's tunables" if "never declared" in text else
                    "syntax of a newer AppArmor" if "syntax error" in text or "Invalid" in text else "other")
            reasons[f"parser: {kind}"] += 1
        else:
            reasons["model's rules"] += 1
    report_figure(f"AppArmor corpus, `secprofiles import` + `lint` with apparmor_parser "
                  f"{asyncio.run(apparmor_parser.version())}: {outcome['clean']} of {len(files)} clean, {outcome['refused']} refused ("
                  + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) + "), 0 crashed")
    assert outcome["clean"] + outcome["refused"] == len(files)
    assert reasons["model's rules"] <= 0.1 * len(files)


@needs_corpus
def test_seccomp_corpus_imports_and_lints_clean(report_figure: Callable[[str], None]) -> None:
    files = sorted((CORPUS / "seccomp").iterdir())
    clean, refused = 0, {}
    for path in files:
        try:
            findings = evaluate_sync(import_file(path).obj).findings
        except importer.UnsupportedInputError as error:
            refused[path.name] = str(error)
            continue
        if findings:
            refused[path.name] = str(findings[0])
        else:
            clean += 1
    report_figure(f"seccomp corpus: {clean} of {len(files)} import and lint clean; refused: "
                  + "; ".join(f"{k}: {v}" for k, v in refused.items()))
    # What cannot be: a seccomp agent (NOTIFY) and a format that was never released. A '#' line before the
    # JSON is ignored, not mistaken for AppArmor.
    assert all("SCMP_ACT_NOTIFY" in reason or "pre-release Docker" in reason for reason in refused.values()), refused
    assert clean == len(files) - len(refused) and len(refused) <= 3
    assert "s3fs-fuse-seccomp.json" not in refused


@pytest.mark.parametrize("name", ["s3fs-fuse-seccomp.json"])
@needs_corpus
def test_a_json_file_with_a_leading_comment_is_read_as_json(name: str) -> None:
    recognised = importer.recognise((CORPUS / "seccomp" / name).read_text())
    assert recognised.format == importer.SECCOMP_JSON and "comment line" in recognised.notes[0]
