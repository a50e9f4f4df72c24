"""Run a command under a logging seccomp filter in a fresh audit session: the first step of ``record``.

Run as a separate interpreter (``python3 -I launcher.py ...``, ``command`` in Python), never imported for its
code: a new process has exactly one thread, so installing the filter and exec'ing cannot deadlock on a lock
another thread held at fork (the hazard of ``subprocess``'s ``preexec_fn``), and the filter is built in the
process it confines. It imports only the standard library and pyseccomp, and takes everything as arguments, so
it runs isolated (``-I``: no PYTHONPATH, no script directory on the path) from wherever the package is.

    launcher.py --status-fd FD [--new-session] --arch TOKEN... -- PROGRAM ARGS...
    launcher.py --barrier --arch TOKEN...

Steps: (1) with ``--new-session``, write the current uid to ``/proc/self/loginuid``: the kernel gives the process
a new audit session id, inherited by every descendant and printed in each record (``ses=``); (2) resolve PROGRAM
on PATH; (3) build a filter whose default action is SCMP_ACT_LOG for every given architecture (so a 32-bit
syscall is logged too, not killed as a "bad architecture"), with no_new_privs only when the process lacks
CAP_SYS_ADMIN (so setuid programs in the recorded tree behave as they do outside); (4) report
``session=N no_new_privs=B`` on FD; (5) load the filter; (6) ``execve``. Nothing runs between (5) and (6) but the
``execve`` itself, so the recording holds the command's syscalls and that one.

Invariants: a failure before the exec is reported on FD as ``error=<step>: <reason>`` and exits 127; FD is
close-on-exec, so the recorder sees end-of-file exactly when the exec succeeded. ``--barrier`` loads the same
filter and makes one syscall: its record tells the recorder that every record queued before it has arrived.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pyseccomp

CAP_SYS_ADMIN = 21


def command_line(*arguments: str) -> list[str]:
    """How the recorder runs this file: the same interpreter, isolated."""
    return [sys.executable, "-I", str(Path(__file__)), *arguments]


def arch_arguments(tokens: Sequence[int]) -> list[str]:
    """``--arch TOKEN`` for each libseccomp architecture token."""
    return [item for token in tokens for item in ("--arch", hex(token))]


def _has_cap_sys_admin() -> bool:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return False


def logging_filter(arch_tokens: Sequence[int]) -> pyseccomp.SyscallFilter:
    """Default action SCMP_ACT_LOG on every architecture given."""
    log_filter = pyseccomp.SyscallFilter(pyseccomp.LOG)
    for token in arch_tokens:
        if not log_filter.exist_arch(token):
            log_filter.add_arch(token)
    log_filter.set_attr(pyseccomp.Attr.CTL_NNP, 0 if _has_cap_sys_admin() else 1)
    return log_filter


def _fail(status: int, step: str, reason: str) -> NoReturn:
    os.write(status, f"error={step}: {reason}\n".encode())
    os._exit(127)


def _new_session(status: int) -> int:
    try:
        with open("/proc/self/loginuid", "w") as loginuid:
            loginuid.write(str(os.getuid()))
    except OSError as error:
        _fail(status, "new audit session", f"writing /proc/self/loginuid: {error.strerror}: the login uid is "
              "already set and this process lacks CAP_AUDIT_CONTROL, or it is immutable (auditctl --loginuid-"
              "immutable)")
    with open("/proc/self/sessionid") as sessionid:
        return int(sessionid.read())


def main(argv: list[str]) -> None:
    split = argv.index("--") if "--" in argv else len(argv)
    options, command = argv[:split], argv[split + 1:]
    arches = [int(options[i + 1], 0) for i, option in enumerate(options) if option == "--arch"]
    if "--barrier" in options:
        log_filter = logging_filter(arches)
        os.read(0, 1)  # the recorder knows this pid before the syscall below is made
        log_filter.load()
        os.getppid()
        os._exit(0)
    status = int(options[options.index("--status-fd") + 1])
    os.set_inheritable(status, False)  # closed by the exec: end-of-file tells the recorder the exec succeeded
    session = _new_session(status) if "--new-session" in options else -1
    program = (shutil.which(command[0]) if "/" not in command[0] else command[0]) if command else None
    if program is None:
        _fail(status, "exec", f"{command[0] if command else 'no command'}: command not found")
    try:
        log_filter = logging_filter(arches)
    except (OSError, ValueError, RuntimeError) as error:
        _fail(status, "build filter", str(error))
    nnp = log_filter.get_attr(pyseccomp.Attr.CTL_NNP)
    os.write(status, f"session={session} no_new_privs={nnp}\n".encode())
    try:
        log_filter.load()
    except (OSError, RuntimeError) as error:
        _fail(status, "load filter", str(error))
    try:
        os.execve(program, command, os.environ)
    except OSError as error:
        _fail(status, "exec", f"{program}: {error.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
