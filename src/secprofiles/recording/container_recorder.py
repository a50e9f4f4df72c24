"""A node's recorder: SECCOMP records of the whole node -> syscall sets of the selected containers.

I/O composition: one ``AuditMulticastSocket``, ``procfs.ProcFs`` and a ``ContainerAttributor``; with lineage, a
``ProcConnector``. The caller selects pods (by UID, as soon as it learns a recorded pod is scheduled on its node)
or containers (by id), and releases them when the recording ends, getting each container's set.

What it must run with: the host's pid namespace (record pids are the host's; /proc must be the host's), the host's
network namespace (audit multicast lives in the initial one), CAP_AUDIT_READ, and read access to
/proc/<pid>/stat and /proc/<pid>/cgroup of other users' processes (world-readable: CAP_SYS_PTRACE is not needed).
With the proc connector (CAP_NET_ADMIN, which also lifts the audit socket's buffer above rmem_max) it follows
forks and exits (``attribution`` lineage), which is what attributes short-lived processes; without it, only
processes still alive at their first record are.

Invariants: feeding is synchronous and bounded per datagram (parsing, a dict lookup, at most a few small /proc
reads for a pid not seen yet or seen with newer records); ``overruns`` > 0 marks every set recorded meanwhile as
possibly incomplete, which the caller must report; unparsable records are counted, never fatal.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from secprofiles.model.syscalls import arch_token, node_architectures
from secprofiles.recording.attribution import ContainerAttributor, Outcome
from secprofiles.recording.audit_barrier import Barrier
from secprofiles.recording.audit_records import seccomp_records
from secprofiles.recording.audit_socket import AuditMulticastSocket
from secprofiles.recording.proc_connector import ProcConnector
from secprofiles.recording.proc_events import Fork
from secprofiles.recording.procfs import ProcFs, boot_time_realtime

EXPIRE_EVERY = 1.0  # seconds between expiries of pending (not yet selected) containers


class ContainerRecorder:
    """Reads and attributes while ``run`` runs; ``attributor`` holds the selection and the sets."""

    def __init__(self, audit: AuditMulticastSocket, attributor: ContainerAttributor,
                 connector: ProcConnector | None) -> None:
        self.audit = audit
        self.attributor = attributor
        self.connector = connector
        self.outcomes: Counter[Outcome] = Counter()
        self.unparsed = 0
        self.barrier = Barrier()
        self._expired_at = time.monotonic()

    @classmethod
    def on_this_node(cls, proc_root: str = "/proc", *, lineage: bool = True, pending_for: float = 30.0,
                     max_pending: int = 64, max_pids: int = 8192) -> ContainerRecorder:
        """The recorder with real sockets: raises ``AuditUnavailable`` without CAP_AUDIT_READ, and with
        ``lineage`` ``ProcConnectorUnavailable`` without CAP_NET_ADMIN."""
        proc = ProcFs(proc_root)
        attributor = ContainerAttributor(proc, ticks_per_second=proc.ticks_per_second,
                                         boot_realtime=boot_time_realtime(), wall_clock=time.time,
                                         pending_for=pending_for, max_pending=max_pending, max_pids=max_pids)
        audit = AuditMulticastSocket()
        try:
            connector = ProcConnector() if lineage else None
        except BaseException:
            audit.close()
            raise
        return cls(audit, attributor, connector)

    def follow_processes(self) -> None:
        """Apply the fork and exit events queued now (before any audit record they may concern)."""
        if self.connector is None:
            return
        offset = self.connector.realtime_offset
        events = self.connector.read_available()
        self.attributor.lineage_complete = self.connector.overruns == 0
        for event in events:
            if isinstance(event, Fork):
                self.attributor.observe_fork(event.parent, event.child, event.monotonic + offset)
            else:
                self.attributor.observe_exit(event.pid, event.monotonic + offset)

    def feed(self, datagram: bytes) -> None:
        """Attribute the records of one datagram (the barrier's own record to nobody)."""
        records, unparsed = seccomp_records(datagram)
        self.unparsed += unparsed
        for record in records:
            if not self.barrier.observe(record):
                self.outcomes[self.attributor.observe(record)] += 1

    async def run(self) -> None:
        """Read and attribute until cancelled."""
        loop = asyncio.get_running_loop()
        if self.connector is not None:
            loop.add_reader(self.connector.fileno(), self.follow_processes)
        try:
            async for batch in self.audit.batches():
                self.follow_processes()
                for datagram in batch:
                    self.feed(datagram)
                now = time.monotonic()
                if now - self._expired_at >= EXPIRE_EVERY:
                    self.attributor.expire()
                    self._expired_at = now
        finally:
            if self.connector is not None:
                loop.remove_reader(self.connector.fileno())

    async def sync(self, wait_seconds: float = 10.0) -> None:
        """Return once every record queued before this call was attributed (``run`` must be running); raises
        ``AuditSilent`` when no record arrives at all (audit off, wrong network namespace)."""
        await self.barrier.cross([arch_token(arch) for arch in node_architectures()], wait_seconds)

    def close(self) -> None:
        self.audit.close()
        if self.connector is not None:
            self.connector.close()
