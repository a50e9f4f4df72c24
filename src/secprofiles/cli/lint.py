"""``secprofiles lint``: every check the operator would make, on files, without a cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from secprofiles.cli.documents import Document, DocumentError, expand, load_file
from secprofiles.model import apparmor_parser, schema
from secprofiles.model.evaluate import evaluate
from secprofiles.model.seccomp import Spec


@dataclass(frozen=True)
class LintFinding:
    """A finding located in a file."""

    path: str
    line: int
    kind: str
    name: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        what = f"{self.kind}/{self.name}: " if self.kind else ""
        field = f"{self.field}: " if self.field else ""
        return f"{where}: {what}{field}{self.message}"

    def as_dict(self) -> dict[str, Any]:
        """JSON form for ``--output json``."""
        return asdict(self)


@dataclass(frozen=True)
class LintReport:
    """Findings plus what was checked and what could not be."""

    findings: list[LintFinding]
    checked: int
    skipped: int
    notes: list[str]


def lint(paths: Iterable[Path], default_namespace: str = "default") -> LintReport:
    """Lint the YAML files at ``paths`` (directories are searched recursively)."""
    return asyncio.run(_lint(list(paths), default_namespace))


def _identity(doc: Document, default_namespace: str) -> tuple[str, str, str]:
    obj = doc.obj
    kind = str(obj.get("kind", ""))
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", "")) if isinstance(meta, dict) else ""
    namespaced = kind in schema.crds() and schema.is_namespaced(kind)
    namespace = str(meta.get("namespace") or default_namespace) if namespaced and isinstance(meta, dict) else ""
    return kind, namespace, name


async def _lint(paths: list[Path], default_namespace: str) -> LintReport:
    findings: list[LintFinding] = []
    docs: list[Document] = []
    for path in expand(paths):
        try:
            docs += load_file(path)
        except DocumentError as error:
            findings.append(LintFinding(error.path, error.line, "", "", "", error.message))

    ours: list[Document] = []
    skipped = 0
    for doc in docs:
        if not isinstance(doc.obj, dict):
            findings.append(LintFinding(doc.path, doc.line, "", "", "", "document is not a mapping (an object)"))
        elif not str(doc.obj.get("apiVersion", "")).startswith(schema.GROUP + "/"):
            if "apiVersion" not in doc.obj or "kind" not in doc.obj:
                findings.append(LintFinding(doc.path, doc.line, "", "", "", "document has no apiVersion/kind"))
            else:
                skipped += 1
        else:
            ours.append(doc)

    seen: dict[tuple[str, str, str], Document] = {}
    specs: dict[tuple[str, str], Spec] = {}
    for doc in ours:
        kind, namespace, name = _identity(doc, default_namespace)
        key = (kind, namespace, name)
        if key in seen and name:
            first = seen[key]
            findings.append(LintFinding(doc.path, doc.line, kind, name, "metadata.name",
                                        f"duplicate: {kind} {name!r} is also defined at {first.path}:{first.line}"))
            continue
        seen[key] = doc
        if kind == schema.SECCOMP_PROFILE and isinstance(doc.obj.get("spec"), dict):
            specs[(namespace, name)] = doc.obj["spec"]

    def lookup(namespace: str, name: str) -> Spec | None:
        return specs.get((namespace, name))

    notes = []
    if any(_identity(d, default_namespace)[0] == schema.APPARMOR_PROFILE for d in ours) and \
            not apparmor_parser.available():
        notes.append(apparmor_parser.NOT_INSTALLED)

    async def check(doc: Document) -> list[LintFinding]:
        kind, namespace, name = _identity(doc, default_namespace)
        obj = doc.obj
        meta = obj.get("metadata")
        if kind == schema.SECCOMP_PROFILE and namespace and isinstance(meta, dict):  # else: a schema finding
            obj = {**obj, "metadata": {**meta, "namespace": namespace}}
        outcome = await evaluate(obj, lookup)
        return [LintFinding(doc.path, doc.line_of(f.field), kind, name, f.field, f.message)
                for f in outcome.findings]

    for result in await asyncio.gather(*(check(doc) for key, doc in seen.items())):
        findings += result
    findings.sort(key=lambda f: (f.path, f.line, f.field, f.message))
    return LintReport(findings, len(seen), skipped, notes)
