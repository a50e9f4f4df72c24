"""The ``secprofiles`` command: lint, render, import and record profiles without a cluster.

Exit codes: 0 clean, 1 findings (``record``: failed, nothing written), 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from secprofiles.cli import importer, lint, record, spo, yamlout
from secprofiles.cli.documents import DocumentError, load_file
from secprofiles.model import schema, seccomp, syscalls
from secprofiles.model.evaluate import evaluate_sync
from secprofiles.model.findings import Finding

EXIT_CLEAN, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secprofiles", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("lint", help="check profile YAML files (schema, syscalls, bases, AppArmor rules)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="YAML files or directories")
    p.add_argument("--output", choices=["text", "json"], default="text")
    p.add_argument("--namespace", default="default", help="namespace of objects that name none")

    p = commands.add_parser("render", help="print the exact node file a profile produces, and its hash")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--name", help="which profile of a multi-document file")
    p.add_argument("--namespace", default="default", help="namespace of objects that name none")
    p.add_argument("--output-dir", type=Path, help="write every profile's file under DIR at its node path")

    p = commands.add_parser("import", help="turn a seccomp JSON or AppArmor profile file, or Security Profiles "
                                           "Operator resources, into CR YAML")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--name", help="object name (default: from the file or profile name)")
    p.add_argument("--namespace", help="namespace of a SeccompProfile or ProfileBinding (default: none set; SPO "
                                       "objects keep theirs unless this is given)")
    p.add_argument("--profile", help="AppArmor: which top-level profile of the file to import (default: the first)")
    p.add_argument("--arch", default=None,
                   help="architecture to resolve archMap/includes for: Go (amd64) or OCI (SCMP_ARCH_X86_64) "
                        "name; default this machine's")
    p.add_argument("--capabilities", default=",".join(importer.DEFAULT_CAPABILITIES),
                   help="comma-separated capabilities the containers hold (default: containerd's default set)")

    record.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "lint":
            return _lint(args)
        if args.command == "render":
            return _render(args)
        if args.command == "record":
            return record.run(args)
        return _import(args)
    except BrokenPipeError:
        return EXIT_CLEAN


def _usage(message: str) -> int:
    print(f"secprofiles: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _lint(args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        return _usage(f"no such file or directory: {', '.join(missing)}")
    report = lint.lint(args.paths, args.namespace)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output == "json":
        print(json.dumps({"findings": [f.as_dict() for f in report.findings], "checked": report.checked,
                          "skipped": report.skipped, "notes": report.notes}, indent=2))
    else:
        for finding in report.findings:
            print(finding)
        print(f"{report.checked} object(s) checked, {report.skipped} of other kinds skipped, "
              f"{len(report.findings)} finding(s)", file=sys.stderr)
    return EXIT_FINDINGS if report.findings else EXIT_CLEAN


def _render(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        return _usage(f"no such file: {args.file}")
    try:
        docs = [d for d in load_file(args.file) if isinstance(d.obj, dict)
                and d.obj.get("kind") in (schema.SECCOMP_PROFILE, schema.APPARMOR_PROFILE)]
    except DocumentError as error:
        print(error, file=sys.stderr)
        return EXIT_FINDINGS
    if args.name:
        docs = [d for d in docs if d.obj.get("metadata", {}).get("name") == args.name]
    if not docs:
        named = f" named {args.name!r}" if args.name else ""
        return _usage(f"{args.file}: no SeccompProfile or AppArmorProfile{named}")
    if len(docs) > 1 and not args.output_dir:
        return _usage(f"{args.file} holds {len(docs)} profiles: choose one with --name or use --output-dir")
    specs = {(d.obj["metadata"].get("namespace", args.namespace), d.obj["metadata"].get("name")): d.obj["spec"]
             for d in docs if d.obj.get("kind") == schema.SECCOMP_PROFILE and isinstance(d.obj.get("metadata"), dict)}
    status = EXIT_CLEAN
    for doc in docs:
        obj = doc.obj
        if obj.get("kind") == schema.SECCOMP_PROFILE:
            obj = {**obj, "metadata": {**obj.get("metadata", {}),
                                       "namespace": obj.get("metadata", {}).get("namespace", args.namespace)}}
        outcome = evaluate_sync(obj, lambda ns, n: specs.get((ns, n)))
        label = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if outcome.rendered is None:
            for finding in outcome.findings:
                print(f"{doc.path}:{doc.line_of(finding.field)}: {label}: {finding}", file=sys.stderr)
            status = EXIT_FINDINGS
            continue
        rendered = outcome.rendered
        # seccomp: the path under <kubelet root>/seccomp; AppArmor: beside them, by profile name
        seccomp_file = isinstance(rendered, seccomp.Rendered)
        target = rendered.localhost_profile if seccomp_file else f"apparmor/{rendered.localhost_profile}"
        if args.output_dir:
            path = args.output_dir / target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rendered.content)
            print(f"{rendered.content_hash}  {path}")
        else:
            sys.stdout.buffer.write(rendered.content)
            print(f"{label}: {rendered.content_hash} {target}", file=sys.stderr)
    return status


def _import_spo(args: argparse.Namespace, text: str) -> int:
    """Security Profiles Operator resources: every object of the file, each with its notes, then linted."""
    migration = spo.migrate_text(text, args.namespace)
    if not migration.imported and not migration.skipped:
        raise importer.UnsupportedInputError("no objects in the file")
    if not migration.imported and all("not a Security Profiles Operator" in s for s in migration.skipped):
        raise importer.UnsupportedInputError("Kubernetes objects, but none of the Security Profiles Operator: "
                                             "nothing to import")
    for skipped in migration.skipped:
        print(f"secprofiles: {args.file}: not imported: {skipped}", file=sys.stderr)
    specs = {(r.obj["metadata"].get("namespace"), r.obj["metadata"]["name"]): r.obj["spec"]
             for r in migration.imported if r.obj["kind"] == schema.SECCOMP_PROFILE}
    status = EXIT_FINDINGS if migration.skipped else EXIT_CLEAN
    for index, result in enumerate(migration.imported):
        label = f"{result.obj['kind']}/{result.obj['metadata']['name']}"
        for note in result.notes:
            print(f"note: {label}: {note}", file=sys.stderr)
        sys.stdout.write(("---\n" if index else "") + yamlout.dump(result.obj, [f"Imported from {args.file.name}",
                                                                             *result.notes]))
        if result.obj["kind"] == schema.PROFILE_BINDING:
            findings: tuple[Finding, ...] = tuple(schema.validate(result.obj))
        else:
            findings = evaluate_sync(result.obj, lambda ns, n: specs.get((ns, n))).findings
        for finding in findings:
            print(f"{args.file}: {label}: {finding}", file=sys.stderr)
        status = EXIT_FINDINGS if findings else status
    return status


def _import(args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return _usage(f"cannot read {args.file}: {getattr(error, 'strerror', None) or error}")
    arch = args.arch or syscalls.native_architecture()
    arch = syscalls.GO_ARCH_TO_OCI.get(arch, arch)
    if arch not in syscalls.OCI_TO_LIBSECCOMP:
        return _usage(f"unknown architecture {args.arch!r}; use e.g. amd64, arm64 or SCMP_ARCH_X86_64")
    try:
        recognised = importer.recognise(text)
        if recognised.format == importer.SECCOMP_JSON:
            name = args.name or importer.dns_name(args.file.name.removesuffix(".json"))
            caps = tuple(c.strip() for c in args.capabilities.split(",") if c.strip())
            result = importer.import_seccomp(recognised.text, name, args.namespace, arch, caps)
            comments = [f"Imported from {args.file.name} for {arch} with capabilities {','.join(caps)}"]
        elif recognised.format == importer.APPARMOR_TEXT:
            result = importer.import_apparmor(recognised.text, args.name, args.profile)
            comments = [f"Imported from {args.file.name}"]
        else:
            return _import_spo(args, recognised.text)
    except importer.UnsupportedInputError as error:
        print(f"secprofiles: {args.file}: {error}", file=sys.stderr)
        return EXIT_FINDINGS
    result.notes[:0] = recognised.notes
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    sys.stdout.write(yamlout.dump(result.obj, comments + result.notes))
    outcome = evaluate_sync(result.obj)
    for finding in outcome.findings:
        print(f"{args.file}: {finding}", file=sys.stderr)
    return EXIT_FINDINGS if outcome.findings else EXIT_CLEAN
