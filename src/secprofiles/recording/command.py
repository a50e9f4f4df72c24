"""``secprofiles record -- COMMAND``: run a command under a logging filter and collect its process tree's syscalls.

I/O orchestration over the pure parts: ``launcher`` (fresh audit session, SCMP_ACT_LOG filter, exec) in a new
interpreter, ``audit_socket`` for the records, ``SessionCollector`` (pure) to keep this session's.

Invariants:
- The audit socket is joined before the command starts, so no record can be missed for lack of a reader; records
  that arrive before the launcher reported its session id are held and sorted once it is known.
- The recording ends when COMMAND exits; then a *barrier* process (same filter, one syscall) is started and the
  recording waits for its record. The kernel queues audit records in one FIFO, so every record the tree made
  before COMMAND exited has arrived once the barrier's has. Descendants still running after that are not
  recorded (``stray_processes`` counts the ones seen).
- The launcher's own syscalls between loading the filter and its ``execve`` are excluded (it makes none but the
  exec itself, measured), so the set is COMMAND's.
- An incomplete recording is an error, never a silent partial set: no record at all for the barrier (kernel
  audit disabled, seccomp's ``log`` action not logged, a reader outside the initial network namespace), or any
  receive-buffer overrun, raises ``RecordingError`` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from secprofiles.model.syscalls import arch_token, node_architectures, syscall_name
from secprofiles.recording import launcher
from secprofiles.recording.attribution import SessionAttribution
from secprofiles.recording.audit_barrier import AuditSilent, Barrier
from secprofiles.recording.audit_records import SeccompRecord, record_architecture, seccomp_records
from secprofiles.recording.audit_socket import AuditMulticastSocket, AuditUnavailable
from secprofiles.recording.syscall_sets import SyscallSet

ACTIONS_LOGGED = Path("/proc/sys/kernel/seccomp/actions_logged")
BARRIER_SECONDS = 10.0


class RecordingError(RuntimeError):
    """The recording cannot be made or is incomplete; the message says why. Nothing must be written."""


@dataclass(frozen=True)
class CommandRecording:
    """What ``record_command`` saw."""

    returncode: int
    syscalls: SyscallSet
    architectures: tuple[str, ...]
    records: int
    no_new_privs: bool  # set when the launcher lacked CAP_SYS_ADMIN: setuid programs ran without their privileges
    unparsed: int
    seconds: float
    launcher_syscalls: tuple[str, ...]  # what the launcher did between loading the filter and exec (excluded)
    stray_processes: int  # processes of the session seen after COMMAND exited (not recorded)
    pids: frozenset[int]  # every process seen (bounded by pid_max)


def check_log_action_logged(actions_logged: Path = ACTIONS_LOGGED) -> None:
    """SCMP_ACT_LOG emits records only while ``log`` is in seccomp's actions_logged sysctl."""
    try:
        logged = actions_logged.read_text().split()
    except OSError as error:
        raise RecordingError(f"cannot read {actions_logged}: {error.strerror} (kernel without seccomp?)") from error
    if "log" not in logged:
        raise RecordingError(f"seccomp's log action is not logged on this kernel: {actions_logged} lists "
                             f"{' '.join(logged) or 'nothing'}; add 'log' to it (as root) to record")


class SessionCollector:
    """Datagrams -> the session's attribution (pure): early records held, the launcher's preamble and the
    barrier's record set apart, records after the barrier counted as strays."""

    def __init__(self) -> None:
        self.attribution: SessionAttribution | None = None
        self.launcher_pid = -1
        self.launcher_execed = False
        self.barrier = Barrier()
        self.unparsed = 0
        self.preamble: list[str] = []  # the launcher's syscalls after its filter was loaded
        self.stray: set[int] = set()
        self.early: list[SeccompRecord] = []

    def feed(self, datagram: bytes) -> None:
        records, unparsed = seccomp_records(datagram)
        self.unparsed += unparsed
        for record in records:
            if self.barrier.observe(record):
                continue
            if self.attribution is None:
                self.early.append(record)  # the session id is not known yet; replayed by start()
                continue
            self._observe(record)

    def start(self, session: int, launcher_pid: int) -> SessionAttribution:
        """The launcher reported its session: records from now on (and those already read) are sorted."""
        attribution = self.attribution = SessionAttribution(session)
        self.launcher_pid = launcher_pid
        early, self.early = self.early, []
        for record in early:
            self._observe(record)
        return attribution

    def _observe(self, record: SeccompRecord) -> None:
        if self.attribution is None or record.ses != self.attribution.session:
            return
        if self.barrier.seen.is_set():
            self.stray.add(record.pid)  # made after COMMAND exited: not part of the recording
            return
        if record.pid == self.launcher_pid and not self.launcher_execed:
            arch = record_architecture(record.arch, record.syscall)
            name = syscall_name(arch, record.syscall) if arch else None
            self.preamble.append(name or str(record.syscall))
            if name not in ("execve", "execveat"):
                return
            self.launcher_execed = True
        self.attribution.observe(record)


async def record_command(command: Sequence[str], *, architectures: Sequence[str] | None = None,
                         barrier_seconds: float = BARRIER_SECONDS) -> CommandRecording:
    """Run ``command`` (stdin/stdout/stderr inherited) and return its process tree's syscalls."""
    if not command:
        raise RecordingError("no command given")
    check_log_action_logged()
    arches = tuple(architectures or node_architectures())
    tokens = [arch_token(arch) for arch in arches]
    try:
        audit = AuditMulticastSocket()
    except AuditUnavailable as error:
        raise RecordingError(str(error)) from error
    collector = SessionCollector()
    started = time.monotonic()
    with audit:
        reader = asyncio.create_task(_read(audit, collector))
        try:
            process, session, nnp = await _launch(command, tokens)
            attribution = collector.start(session, process.pid)
            try:
                returncode = await process.wait()
            except asyncio.CancelledError:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                raise
            try:
                await collector.barrier.cross(tokens, barrier_seconds)
            except AuditSilent as error:
                raise RecordingError(f"{error}; nothing is written") from error
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if audit.overruns:
            raise RecordingError(f"the kernel dropped audit records for this reader {audit.overruns} time(s) (its "
                                 "receive buffer was full): the recording is incomplete; nothing is written")
    return CommandRecording(returncode, attribution.syscalls, arches, attribution.records, bool(nnp),
                            collector.unparsed, time.monotonic() - started, tuple(collector.preamble),
                            len(collector.stray), frozenset(attribution.pids))


async def _read(audit: AuditMulticastSocket, collector: SessionCollector) -> None:
    async for batch in audit.batches():
        for datagram in batch:
            collector.feed(datagram)


async def _launch(command: Sequence[str], tokens: Sequence[int]) -> tuple[asyncio.subprocess.Process, int, int]:
    read_end, write_end = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *launcher.command_line("--status-fd", str(write_end), "--new-session", *launcher.arch_arguments(tokens),
                                   "--", *command), pass_fds=(write_end,))
    finally:
        os.close(write_end)
    status = (await asyncio.to_thread(_read_all, read_end)).decode()
    error = next((line.removeprefix("error=") for line in status.splitlines() if line.startswith("error=")), None)
    fields = dict(token.split("=", 1) for token in status.split("\n", 1)[0].split() if "=" in token)
    if error is not None or "session" not in fields:
        await process.wait()
        raise RecordingError(f"cannot start {command[0]!r} under the logging filter: "
                             f"{error or 'the launcher exited without a word'}")
    return process, int(fields["session"]), int(fields.get("no_new_privs", "1"))


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)
