"""Which recording a SECCOMP record belongs to. Pure: /proc is reached through the ``ProcessTable`` Protocol.

Two attributions:

``SessionAttribution`` (``secprofiles record -- COMMAND``): the launcher writes ``/proc/self/loginuid`` before it
installs the filter and execs, which gives COMMAND a fresh audit session id that every descendant inherits and
that each record carries (``ses=``). Attribution needs no lookup, so a child that exited long before its records
are read is still counted, and processes of other sessions (other LOG-filtered workloads) never are.

``ContainerAttributor`` (the node agent): pid -> container from the process's cgroups, looked up at the first
record of a pid. Invariants:

- Pid reuse cannot misattribute. A lookup knows the process's start time S (ticks since boot, converted to the
  records' wall clock) and the time C it was checked. The same pid names the same process from S to C, so a
  record with S - TOLERANCE <= time <= C is that process's; a record newer than C makes the pid be checked again
  (one read of /proc/<pid>/stat per pid per batch of records); a record older than S was made by an earlier
  process with this pid, whose container is no longer knowable: unattributed. (Records are stamped with the
  kernel's coarse clock, up to one tick behind; a pid is reused only after pid_max other pids were handed out,
  which takes far longer than a tick.)
- Lineage (optional, from the proc connector): a fork event gives the child its parent's container at once,
  and an exit event bounds the process's life, so the records of a child that exited before anyone could look
  at /proc are still attributed (measured: without lineage 1,515 of 1,527 short processes in a podman container
  could not be looked up). Fork events are read before each batch of audit records (they are queued inside
  fork(), before the child runs), and the parent of an unknown forking process is looked up while it is alive.
- A record whose process is gone before its lookup, with no lineage for it, is unattributed (counted, with its
  comm/exe and syscalls, in ``unattributed``), never guessed: the records hold nothing else naming a container.
- Records of a container that is seen but not (yet) selected are kept ``pending`` for ``pending_for`` seconds
  (at most ``max_pending`` containers) so a container whose selection arrives a little after its first syscalls
  (the agent learns pods from the API server while the kubelet starts them) loses nothing.
- A set notes the measured runtime whose init process (by comm) made some of its syscalls (``SyscallSet.runtime``):
  the runtime's post-filter syscalls it may not always make are then added to the profile.
- Memory: one SyscallSet per selected container (bounded by the syscall table), ``max_pending`` pending sets,
  at most ``max_pids`` cached pids and as many pids found gone (LRU), and a bounded unattributed summary; never
  proportional to events or to the node's pods.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from secprofiles.recording.audit_records import SeccompRecord, record_architecture
from secprofiles.recording.container_identity import AmbiguousCgroup, ContainerIdentity, container_of
from secprofiles.recording.runtime_syscalls import runtime_inits
from secprofiles.recording.syscall_sets import SyscallSet

# Start times have the tick's resolution (10 ms at USER_HZ 100) and record times the kernel's coarse clock.
TOLERANCE = 0.05


class Outcome(enum.Enum):
    RECORDED = "recorded"            # added to a selected target
    PENDING = "pending"              # a container not (yet) selected; kept for a while
    UNRELATED = "unrelated"          # another session, a process in no container, not a LOG record, unknown arch
    UNATTRIBUTED = "unattributed"    # the process was gone (or its pid reused) before it could be looked up


@dataclass(frozen=True, slots=True)
class ProcessSnapshot:
    start_ticks: int
    cgroup: str


class ProcessTable(Protocol):
    """What attribution reads about a live process (``procfs.ProcFs`` on a node)."""

    def start_ticks(self, pid: int) -> int | None: ...

    def snapshot(self, pid: int) -> ProcessSnapshot | None: ...


class SessionAttribution:
    """Every record of one audit session, into one set."""

    def __init__(self, session: int) -> None:
        self.session = session
        self.syscalls = SyscallSet()
        self.records = 0
        self.pids: set[int] = set()

    def observe(self, record: SeccompRecord) -> Outcome:
        if record.ses != self.session or not record.logged:
            return Outcome.UNRELATED
        arch = record_architecture(record.arch, record.syscall)
        if arch is None:
            return Outcome.UNRELATED
        self.records += 1
        self.pids.add(record.pid)
        self.syscalls.add(arch, record.syscall)
        return Outcome.RECORDED


@dataclass(slots=True)
class _Pid:
    """One process: alive from ``start`` (wall clock) until ``exited``; known alive at ``checked``."""

    start: float
    checked: float
    identity: ContainerIdentity | None
    exited: float | None = None
    previous: _Pid | None = None  # the pid's former process, for its records still in flight

    def made(self, at: float) -> bool:
        """Whether a record stamped ``at`` can be this process's, as far as is known."""
        return self.start - TOLERANCE <= at and (self.exited is None or at <= self.exited + TOLERANCE)


@dataclass
class Unattributed:
    """What could not be attributed: counts, and what those records did, per (comm, exe) (at most ``limit``)."""

    limit: int = 64
    records: int = 0
    processes: set[int] = field(default_factory=set)
    by_program: dict[tuple[str | None, str | None], SyscallSet] = field(default_factory=dict)

    def add(self, record: SeccompRecord, arch: str) -> None:
        self.records += 1
        if len(self.processes) < 10_000:
            self.processes.add(record.pid)
        key = (record.comm, record.exe)
        if key in self.by_program or len(self.by_program) < self.limit:
            self.by_program.setdefault(key, SyscallSet()).add(arch, record.syscall)


class ContainerAttributor:
    """Records -> containers by cgroup, for the containers selected by id or by pod UID."""

    def __init__(self, table: ProcessTable, *, ticks_per_second: int, boot_realtime: float,
                 wall_clock: Callable[[], float], pending_for: float = 30.0, max_pending: int = 64,
                 max_pids: int = 8192) -> None:
        self._table = table
        self._hz = ticks_per_second
        self._boot = boot_realtime
        self._now = wall_clock
        self._pending_for = pending_for
        self._max_pending = max_pending
        self._max_pids = max_pids
        self._pids: OrderedDict[int, _Pid] = OrderedDict()
        self._gone: OrderedDict[int, float] = OrderedDict()  # pid -> when a lookup found no process (LRU)
        self._containers: set[str] = set()
        self._pods: set[str] = set()
        self.recorded: dict[ContainerIdentity, SyscallSet] = {}
        self._pending: OrderedDict[ContainerIdentity, tuple[float, SyscallSet]] = OrderedDict()
        self.unattributed = Unattributed()
        self._runtime_inits = runtime_inits()
        self.lookups = 0
        self.forks_attributed = 0
        # True while every fork and exit on the node is seen (proc connector, no overrun): the recorder sets it.
        self.lineage_complete = False

    # -- selection ------------------------------------------------------------------------------------------
    def select_container(self, container_id: str) -> None:
        self._containers.add(container_id)
        self._adopt_pending()

    def select_pod(self, pod_uid: str) -> None:
        self._pods.add(pod_uid)
        self._adopt_pending()

    def release_container(self, container_id: str) -> SyscallSet | None:
        """Stop recording a container; its set is returned and forgotten."""
        self._containers.discard(container_id)
        found = [identity for identity in self.recorded if identity.container_id == container_id]
        return self.recorded.pop(found[0]) if found else None

    def release_pod(self, pod_uid: str) -> dict[ContainerIdentity, SyscallSet]:
        """Stop recording a pod; the sets of its containers are returned and forgotten."""
        self._pods.discard(pod_uid)
        return {identity: self.recorded.pop(identity) for identity in
                [i for i in self.recorded if i.pod_uid == pod_uid and i.container_id not in self._containers]}

    def _selected(self, identity: ContainerIdentity) -> bool:
        return identity.container_id in self._containers or (
            identity.pod_uid is not None and identity.pod_uid in self._pods)

    def _adopt_pending(self) -> None:
        for identity in [i for i in self._pending if self._selected(i)]:
            _, syscalls = self._pending.pop(identity)
            self.recorded.setdefault(identity, SyscallSet()).update(syscalls)

    # -- records --------------------------------------------------------------------------------------------
    def observe(self, record: SeccompRecord) -> Outcome:
        arch = record_architecture(record.arch, record.syscall)
        if arch is None or not record.logged:
            return Outcome.UNRELATED
        entry = self._process(record)
        if entry is None:
            self.unattributed.add(record, arch)
            return Outcome.UNATTRIBUTED
        identity = entry.identity
        if identity is None:
            return Outcome.UNRELATED
        if self._selected(identity):
            target = self.recorded.get(identity)
            if target is None:
                target = self.recorded[identity] = SyscallSet()
            outcome = Outcome.RECORDED
        else:
            pending = self._pending.get(identity)
            if pending is None:
                if len(self._pending) >= self._max_pending:
                    self._pending.popitem(last=False)
                pending = self._pending[identity] = (record.time, SyscallSet())
            target, outcome = pending[1], Outcome.PENDING
        target.add(arch, record.syscall)
        if target.runtime is None and record.comm in self._runtime_inits:
            target.runtime = self._runtime_inits[record.comm]
        return outcome

    def _process(self, record: SeccompRecord) -> _Pid | None:
        """The process that made ``record``, from the cache, lineage or /proc; None when it is not knowable."""
        entry = self._pids.get(record.pid)
        if entry is not None:
            self._pids.move_to_end(record.pid)
            if record.time < entry.start - TOLERANCE:
                previous = entry.previous
                return previous if previous is not None and previous.made(record.time) else None
            if entry.exited is not None:
                if entry.made(record.time):
                    return entry
                entry = None  # a newer process with this pid, whose fork was not seen
            elif record.time > entry.checked:
                checked = self._now()  # taken before the read: the process was alive with that start then
                ticks = self._table.start_ticks(record.pid)
                if ticks is not None and abs(self._boot + ticks / self._hz - entry.start) <= TOLERANCE:
                    entry.checked = checked
                elif not (ticks is None and self.lineage_complete):
                    entry = None
                # else: gone, and no fork gave the pid to anyone since: the record is this process's (its exit
                # event is still queued behind the records being read)
        if entry is None:
            gone_at = self._gone.get(record.pid)
            if gone_at is not None and record.time <= gone_at:
                return None  # its process was already found gone: no need to look again
            entry = self._lookup(record.pid)
            if entry is None or not entry.made(record.time):
                return None  # gone, or made by an earlier process with the same pid
        return entry

    def _lookup(self, pid: int) -> _Pid | None:
        self.lookups += 1
        checked = self._now()
        snapshot = self._table.snapshot(pid)
        if snapshot is None:
            self._gone[pid] = checked
            self._gone.move_to_end(pid)
            if len(self._gone) > self._max_pids:
                self._gone.popitem(last=False)
            return None
        try:
            identity = container_of(snapshot.cgroup)
        except AmbiguousCgroup:
            return None
        return self._remember(pid, _Pid(self._boot + snapshot.start_ticks / self._hz, checked, identity))

    def _remember(self, pid: int, entry: _Pid) -> _Pid:
        former = self._pids.pop(pid, None)
        if former is not None and former.start < entry.start - TOLERANCE:
            former.previous = None
            entry.previous = former
        self._pids[pid] = entry
        if len(self._pids) > self._max_pids:
            self._pids.popitem(last=False)
        return entry

    # -- lineage (proc connector) ---------------------------------------------------------------------------
    def observe_fork(self, parent: int, child: int, at: float) -> None:
        """``parent`` forked ``child`` at wall-clock ``at``: a container process's child is in its container.

        A child of a process in no container is not assumed to stay there: runtimes fork their init process
        from the host and then move it into the container's cgroup (runc's ``runc:[2:INIT]``, ``runc exec``);
        such a child is looked up at its first record (it lives on as the container's process).
        """
        entry = self._pids.get(parent)
        if entry is None or not entry.made(at):
            entry = self._lookup(parent)  # it just forked: usually still alive
            if entry is None or not entry.made(at):
                return
        if entry.identity is None:
            return
        self.forks_attributed += 1
        self._remember(child, _Pid(at, at, entry.identity))

    def observe_exit(self, pid: int, at: float) -> None:
        entry = self._pids.get(pid)
        if entry is not None and entry.exited is None and entry.start - TOLERANCE <= at:
            entry.exited = at

    # -- housekeeping ---------------------------------------------------------------------------------------
    def expire(self) -> None:
        """Forget pending containers older than ``pending_for`` (call now and then, e.g. every second)."""
        limit = self._now() - self._pending_for
        while self._pending:
            identity, (first_seen, _) = next(iter(self._pending.items()))
            if first_seen >= limit:
                break
            del self._pending[identity]

    @property
    def cached_pids(self) -> int:
        return len(self._pids)

    @property
    def pending(self) -> int:
        return len(self._pending)
