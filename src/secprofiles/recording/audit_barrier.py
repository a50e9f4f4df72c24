"""A barrier through the kernel's audit queue: when its record arrives, every record queued before it has.

The kernel queues audit records in one FIFO (kauditd's ``audit_queue``) and multicasts them in that order. A short
process under a logging filter makes one syscall after the reader knows its pid; its record marks "everything
before this point". It also proves delivery works at all: a kernel booted with ``audit=0``, an audit rule
excluding SECCOMP records, seccomp's ``log`` action missing from ``actions_logged``, or a reader outside the
initial network namespace all show up as a barrier that never arrives, named in the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from secprofiles.recording import launcher
from secprofiles.recording.audit_records import SeccompRecord


class AuditSilent(RuntimeError):
    """No record arrived for the barrier."""


class Barrier:
    """One crossing at a time: ``cross`` runs the process, the reader hands every record to ``observe``."""

    def __init__(self) -> None:
        self.pid = -1
        self.seen = asyncio.Event()

    def observe(self, record: SeccompRecord) -> bool:
        """True for the barrier's own record (which then belongs to no recording)."""
        if record.pid != self.pid:
            return False
        self.seen.set()
        return True

    async def cross(self, arch_tokens: Sequence[int], wait_seconds: float) -> None:
        """Run the barrier process and wait until its record was observed."""
        self.seen.clear()
        process = await asyncio.create_subprocess_exec(
            *launcher.command_line("--barrier", *launcher.arch_arguments(arch_tokens)), stdin=asyncio.subprocess.PIPE)
        self.pid = process.pid  # known before the barrier's syscall: it waits for stdin first
        await process.communicate(b"go")
        try:
            async with asyncio.timeout(wait_seconds):
                await self.seen.wait()
        except TimeoutError:
            raise AuditSilent(
                f"no audit record arrived within {wait_seconds:.0f} s for a process under a logging filter: this "
                "kernel emits no SECCOMP audit records here (booted with audit=0, or an audit rule excludes them) "
                "or this process is not in the initial network namespace, where the audit multicast group "
                "lives") from None
