"""``secprofiles record``: run a command under a logging seccomp filter and write the SeccompProfile it needs.

    secprofiles record --name N [--namespace NS] --output FILE|- [--default-action SCMP_ACT_ERRNO|SCMP_ACT_KILL_PROCESS]
                       [--errno-ret N] [--runtime runc-1.1|none] [--allow-failure] -- COMMAND [ARGS...]

The recording is ``recording.command.record_command``; the profile ``recording.synthesis.synthesize``, with the
measured post-filter syscalls of a container runtime (``--runtime``) as a second rule, so the same program starts
in a container under the profile.

Invariants: FILE is written only when the recording is complete, COMMAND succeeded (or ``--allow-failure``) and
the profile passed synthesis; atomically (temporary file in the same directory, fsync, rename), so an error or a
crash leaves no partial file. Exit status: 0 written, 1 recording error or COMMAND failed (nothing written), 2
usage. The summary goes to stderr; COMMAND keeps the terminal's stdin, stdout and stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from secprofiles.cli import yamlout
from secprofiles.recording.command import CommandRecording, RecordingError, record_command
from secprofiles.recording.runtime_syscalls import DEFAULT_RUNTIME, known_runtimes, runtime_syscalls
from secprofiles.recording.synthesis import DEFAULT_ACTIONS, RECORDED_BY, SynthesisError, synthesize
from secprofiles.recording.syscall_sets import all_names

EXIT_WRITTEN, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
NEEDS = ("Needs root in practice: CAP_AUDIT_READ (the audit multicast group), the host's network namespace, "
         "CAP_NET_ADMIN for a large enough receive buffer, CAP_AUDIT_CONTROL when a login uid is already set.")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``record`` subcommand's options."""
    p = commands.add_parser(
        "record", help="run COMMAND and write the SeccompProfile it needs (syscalls recorded from audit records)",
        description="Run COMMAND under a seccomp filter that logs every syscall (SCMP_ACT_LOG), record the "
                    "syscalls of its whole process tree from the kernel's audit records, and write a SeccompProfile "
                    "that allows them, plus what the container runtime does after installing the filter. " + NEEDS)
    p.add_argument("--name", required=True, help="metadata.name of the profile")
    p.add_argument("--namespace", help="metadata.namespace of the profile (default: none set)")
    p.add_argument("--output", required=True, help="YAML file to write, or - for stdout")
    p.add_argument("--default-action", choices=DEFAULT_ACTIONS, default="SCMP_ACT_ERRNO",
                   help="what the profile does with a syscall that was not recorded (default: SCMP_ACT_ERRNO)")
    p.add_argument("--errno-ret", type=int, help="errno for SCMP_ACT_ERRNO (EPERM when unset)")
    p.add_argument("--runtime", default=DEFAULT_RUNTIME, choices=[*known_runtimes(), "none"],
                   help=f"also allow this runtime's measured post-filter syscalls (default {DEFAULT_RUNTIME}; "
                        "'none' for a profile used outside containers)")
    p.add_argument("--allow-failure", action="store_true", help="write the profile even if COMMAND fails")
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")


def run(args: argparse.Namespace) -> int:
    """Record, synthesize, write; the exit status."""
    command = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not command:
        return _error("no COMMAND given (after --)", EXIT_USAGE)
    if args.output != "-" and not Path(args.output).resolve().parent.is_dir():
        return _error(f"--output {args.output}: no such directory", EXIT_USAGE)
    try:
        recording = asyncio.run(record_command(command))
    except RecordingError as error:
        return _error(str(error))
    print(_summary(recording), file=sys.stderr)
    if recording.returncode != 0 and not args.allow_failure:
        return _error(f"{command[0]} exited with status {recording.returncode}; the recording holds only what it "
                      "did until then, so nothing is written (--allow-failure writes it anyway)")
    runtime = None if args.runtime == "none" else (args.runtime, runtime_syscalls(args.runtime))
    try:
        profile = synthesize(args.name, all_names(recording.syscalls.report()), recording.architectures,
                             namespace=args.namespace, default_action=args.default_action, errno_ret=args.errno_ret,
                             runtime=runtime, annotations={RECORDED_BY: "secprofiles record"})
    except SynthesisError as error:
        return _error(str(error))
    one_line = " ".join(" ".join(command).split())  # a comment line: no newline of a script may end it
    text = yamlout.dump(profile, [f"Recorded by `secprofiles record` from {len(recording.pids)} processes "
                                  f"({recording.records} audit records): {one_line[:200]}"])
    if args.output == "-":
        sys.stdout.write(text)
    else:
        _write_atomically(Path(args.output), text)
        print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_WRITTEN


def _error(message: str, status: int = EXIT_FAILED) -> int:
    print(f"secprofiles record: error: {message}", file=sys.stderr)
    return status


def _summary(recording: CommandRecording) -> str:
    report = recording.syscalls.report()
    per_arch = ", ".join(f"{arch}: {len(names)}" for arch, names in report.items())
    lines = [f"recorded {len(all_names(report))} syscalls ({per_arch}) from {len(recording.pids)} processes, "
             f"{recording.records} audit records, in {recording.seconds:.2f} s"]
    if unnamed := recording.syscalls.unnamed():
        lines.append(f"warning: syscall numbers libseccomp cannot name (a profile cannot allow them): {unnamed}")
    if recording.stray_processes:
        lines.append(f"warning: {recording.stray_processes} processes of COMMAND's tree ran on after it exited; "
                     "what they did afterwards is not recorded")
    if recording.unparsed:
        lines.append(f"warning: {recording.unparsed} audit records could not be parsed")
    if set(recording.launcher_syscalls) - {"execve", "execveat"}:
        lines.append(f"note: the launcher's own syscalls after its filter ({', '.join(recording.launcher_syscalls)}) "
                     "are not in the recording")
    if recording.no_new_privs:
        lines.append("note: no_new_privs was set (no CAP_SYS_ADMIN): setuid programs ran without their privileges")
    return "\n".join(lines)


def _write_atomically(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.resolve().parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
