"""Attribution of records to recordings: by session, or by container (cgroups, lineage, pid reuse, pending)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from devtools.kernel_records import seccomp_text
from secprofiles.recording.attribution import ContainerAttributor, Outcome, ProcessSnapshot, SessionAttribution
from secprofiles.recording.audit_records import SeccompRecord, parse_seccomp_record
from secprofiles.recording.container_identity import ContainerIdentity

A = "a" * 64
B = "b" * 64
POD = "5f0e4c52-8a9b-4c1d-9e2f-0123456789ab"
HZ = 100
BOOT = 1_000_000.0  # wall clock at boot


def cgroup(container: str | None, pod: str | None = None) -> str:
    if container is None:
        return "0::/\n"
    return f"0::/kubepods/pod{pod}/{container}\n" if pod else f"4:memory:/libpod_parent/libpod-{container}\n"


@dataclass
class FakeProc:
    """/proc as a dict: pid -> (start ticks, cgroup text); reads are counted."""

    processes: dict[int, tuple[int, str]] = field(default_factory=dict)
    reads: int = 0

    def start_ticks(self, pid: int) -> int | None:
        self.reads += 1
        found = self.processes.get(pid)
        return found[0] if found else None

    def snapshot(self, pid: int) -> ProcessSnapshot | None:
        self.reads += 1
        found = self.processes.get(pid)
        return ProcessSnapshot(*found) if found else None

    def spawn(self, pid: int, at: float, container: str | None, pod: str | None = None) -> None:
        self.processes[pid] = (round((at - BOOT) * HZ), cgroup(container, pod))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(pid: int, syscall: int, at: float, ses: int = 7, comm: str = "sh", code: int = 0x7FFC0000) -> SeccompRecord:
    return parse_seccomp_record(seccomp_text(pid, syscall, time=at, ses=ses, comm=comm, code=code))


def attributor(proc: FakeProc, clock: Clock, *, pending_for: float = 30.0, max_pending: int = 64,
               max_pids: int = 8192) -> ContainerAttributor:
    return ContainerAttributor(proc, ticks_per_second=HZ, boot_realtime=BOOT, wall_clock=clock,
                               pending_for=pending_for, max_pending=max_pending, max_pids=max_pids)


def names(attr: ContainerAttributor, container: str) -> set[int]:
    found = [s for i, s in attr.recorded.items() if i.container_id == container]
    return {n for n in range(500) if found and ("SCMP_ARCH_X86_64", n) in found[0]}


def test_records_of_a_selected_container_are_recorded_and_others_are_not() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    proc.spawn(10, BOOT + 50, A)
    proc.spawn(11, BOOT + 50, B)
    proc.spawn(12, BOOT + 50, None)
    attr = attributor(proc, clock)
    attr.select_container(A)
    assert attr.observe(record(10, 0, BOOT + 99)) is Outcome.RECORDED
    assert attr.observe(record(11, 1, BOOT + 99)) is Outcome.PENDING
    assert attr.observe(record(12, 2, BOOT + 99)) is Outcome.UNRELATED
    assert names(attr, A) == {0} and names(attr, B) == set()


def test_a_container_selected_after_its_first_syscalls_keeps_them() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    proc.spawn(10, BOOT + 50, A, POD)
    attr = attributor(proc, clock)
    attr.observe(record(10, 59, BOOT + 99))
    attr.select_pod(POD)
    assert attr.observe(record(10, 1, BOOT + 99.5)) is Outcome.RECORDED
    assert attr.recorded.keys() == {ContainerIdentity(A, POD)}
    assert names(attr, A) == {59, 1}


def test_pending_containers_expire_and_are_bounded() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    attr = attributor(proc, clock, pending_for=10.0, max_pending=3)
    for pid in range(5):
        proc.spawn(pid + 10, BOOT + 50, f"{pid:064x}")
        attr.observe(record(pid + 10, 0, BOOT + 99))
    assert attr.pending == 3
    clock.now += 11
    attr.expire()
    assert attr.pending == 0
    attr.select_container(f"{4:064x}")
    assert attr.recorded == {}  # expired before it was selected


def test_a_process_gone_before_lookup_is_unattributed_not_guessed() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    attr = attributor(proc, clock)
    attr.select_container(A)
    assert attr.observe(record(10, 0, BOOT + 99)) is Outcome.UNATTRIBUTED
    assert attr.unattributed.records == 1 and attr.unattributed.processes == {10}
    assert ("sh", "/bin/busybox") in attr.unattributed.by_program
    assert attr.recorded == {}


def test_pid_reuse_after_a_lookup_is_noticed_by_the_start_time() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    proc.spawn(10, BOOT + 50, A)
    attr = attributor(proc, clock)
    attr.select_container(A)
    attr.select_container(B)
    assert attr.observe(record(10, 0, BOOT + 99)) is Outcome.RECORDED
    # pid 10 exits; after a pid wrap it names a process of container B
    proc.spawn(10, BOOT + 150, B)
    clock.now = BOOT + 200
    assert attr.observe(record(10, 1, BOOT + 199)) is Outcome.RECORDED
    assert names(attr, A) == {0} and names(attr, B) == {1}


def test_a_record_older_than_the_process_holding_its_pid_is_unattributed() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 200)
    proc.spawn(10, BOOT + 150, B)  # the record's process (pid 10, container A) is long gone
    attr = attributor(proc, clock)
    attr.select_container(B)
    assert attr.observe(record(10, 0, BOOT + 120)) is Outcome.UNATTRIBUTED
    assert attr.recorded == {}


def test_cached_pids_are_checked_once_per_newer_record_not_per_record() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    proc.spawn(10, BOOT + 50, A)
    attr = attributor(proc, clock)
    attr.select_container(A)
    for syscall in range(100):
        attr.observe(record(10, syscall, BOOT + 99.9))  # made before the lookup at BOOT + 100
    assert proc.reads == 1 and attr.lookups == 1
    clock.now = BOOT + 101
    for syscall in range(100):
        attr.observe(record(10, syscall, BOOT + 100.5))  # made after it: one start-time check, then cached
    assert proc.reads == 2 and len(names(attr, A)) == 100


def test_the_pid_cache_is_bounded() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    attr = attributor(proc, clock, max_pids=100)
    for pid in range(1, 1001):
        proc.spawn(pid, BOOT + 1, None)
        attr.observe(record(pid, 0, BOOT + 99))
    assert attr.cached_pids == 100


def test_release_returns_the_set_and_forgets_it() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    proc.spawn(10, BOOT + 50, A, POD)
    proc.spawn(11, BOOT + 50, B, POD)
    attr = attributor(proc, clock)
    attr.select_pod(POD)
    attr.observe(record(10, 0, BOOT + 99))
    attr.observe(record(11, 1, BOOT + 99))
    released = attr.release_pod(POD)
    assert {i.container_id for i in released} == {A, B} and attr.recorded == {}
    assert attr.observe(record(10, 2, BOOT + 99)) is Outcome.PENDING
    attr.select_container(A)
    released_a = attr.release_container(A)
    assert released_a is not None and ("SCMP_ARCH_X86_64", 2) in released_a


def test_unknown_architecture_is_unrelated() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    attr = attributor(proc, clock)
    weird = parse_seccomp_record(seccomp_text(10, 0, arch=0x1234, time=BOOT + 99))
    assert attr.observe(weird) is Outcome.UNRELATED


@pytest.mark.parametrize(("ses", "outcome"), [(7, Outcome.RECORDED), (8, Outcome.UNRELATED),
                                              (4294967295, Outcome.UNRELATED)])
def test_session_attribution_needs_no_lookup(ses: int, outcome: Outcome) -> None:
    session = SessionAttribution(7)
    assert session.observe(record(123, 59, BOOT, ses=ses)) is outcome
    assert session.records == (outcome is Outcome.RECORDED)


def test_lineage_attributes_a_child_that_exited_before_its_records_were_read() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    proc.spawn(10, BOOT + 50, A)
    attr = attributor(proc, clock)
    attr.select_container(A)
    attr.observe_fork(10, 11, BOOT + 99.0)          # parent looked up at its fork (alive)
    attr.observe_fork(11, 12, BOOT + 99.1)          # grandchild: from the child's lineage, no /proc at all
    attr.observe_exit(12, BOOT + 99.2)
    attr.observe_exit(11, BOOT + 99.3)
    reads = proc.reads
    assert attr.observe(record(12, 87, BOOT + 99.15)) is Outcome.RECORDED  # pid 12 never existed in FakeProc
    assert attr.observe(record(11, 57, BOOT + 99.05)) is Outcome.RECORDED
    assert proc.reads == reads and names(attr, A) == {87, 57}
    assert attr.forks_attributed == 2


def test_lineage_keeps_the_former_process_of_a_reused_pid_for_its_late_records() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 200)
    proc.spawn(10, BOOT + 50, A)
    proc.spawn(20, BOOT + 50, B)
    attr = attributor(proc, clock)
    attr.lineage_complete = True
    attr.select_container(A)
    attr.select_container(B)
    attr.observe_fork(10, 11, BOOT + 100)
    attr.observe_exit(11, BOOT + 101)
    attr.observe_fork(20, 11, BOOT + 150)           # pid 11 handed out again, to container B
    assert attr.observe(record(11, 1, BOOT + 100.5)) is Outcome.RECORDED  # the former process's record
    assert attr.observe(record(11, 2, BOOT + 150.5)) is Outcome.RECORDED
    assert names(attr, A) == {1} and names(attr, B) == {2}
    assert attr.observe(record(11, 3, BOOT + 120)) is Outcome.UNATTRIBUTED  # between the two: no process had it


def test_a_record_after_a_seen_exit_is_not_the_exited_process() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 200)
    proc.spawn(10, BOOT + 50, A)
    attr = attributor(proc, clock)
    attr.select_container(A)
    attr.observe_fork(10, 11, BOOT + 100)
    attr.observe_exit(11, BOOT + 101)
    proc.spawn(11, BOOT + 180, None)                # reused; its fork event was missed (overrun)
    assert attr.observe(record(11, 1, BOOT + 190)) is Outcome.UNRELATED
    assert names(attr, A) == set()


def test_a_fork_by_a_process_that_is_already_gone_gives_nothing() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    attr = attributor(proc, clock)
    attr.select_container(A)
    attr.observe_fork(10, 11, BOOT + 99)
    assert attr.forks_attributed == 0 and attr.cached_pids == 0


@pytest.mark.parametrize(("complete", "outcome"), [(True, Outcome.RECORDED), (False, Outcome.UNATTRIBUTED)])
def test_a_child_gone_before_its_exit_event_was_read_counts_only_if_no_fork_was_missed(
        complete: bool, outcome: Outcome) -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    proc.spawn(10, BOOT + 50, A)
    attr = attributor(proc, clock)
    attr.lineage_complete = complete
    attr.select_container(A)
    attr.observe_fork(10, 11, BOOT + 100)           # pid 11 is gone from /proc; its exit event not read yet
    assert attr.observe(record(11, 1, BOOT + 100.2)) is outcome


def test_a_child_of_a_host_process_is_looked_up_not_inherited() -> None:
    """runc forks its init on the host and moves it into the container's cgroup afterwards."""
    proc, clock = FakeProc(), Clock(BOOT + 100)
    proc.spawn(10, BOOT + 50, None)                 # runc
    attr = attributor(proc, clock)
    attr.select_container(A)
    attr.observe_fork(10, 11, BOOT + 99)
    proc.spawn(11, BOOT + 99, A)                    # runc:[2:INIT], moved into the container
    assert attr.observe(record(11, 59, BOOT + 99.5)) is Outcome.RECORDED
    assert attr.forks_attributed == 0


def test_records_of_other_actions_are_not_recorded() -> None:
    """A nested filter's logged denial (here ERRNO) is no syscall the logging filter let through."""
    proc, clock = FakeProc(), Clock(BOOT + 100)
    proc.spawn(10, BOOT + 50, A)
    attr = attributor(proc, clock)
    attr.select_container(A)
    assert attr.observe(record(10, 0, BOOT + 99, code=0x50001)) is Outcome.UNRELATED
    assert SessionAttribution(7).observe(record(10, 0, BOOT, code=0x50001)) is Outcome.UNRELATED
    assert names(attr, A) == set()


def test_the_runtime_init_among_a_containers_processes_is_noted_even_while_pending() -> None:
    proc, clock = FakeProc(), Clock(BOOT + 100)
    proc.spawn(10, BOOT + 50, A, POD)
    proc.spawn(11, BOOT + 50, B, POD)
    attr = attributor(proc, clock)
    attr.observe(record(10, 59, BOOT + 99, comm="runc:[2:INIT]"))  # before the pod is selected
    attr.select_pod(POD)
    attr.observe(record(11, 0, BOOT + 99.5))
    runtimes = {i.container_id: s.runtime for i, s in attr.release_pod(POD).items()}
    assert runtimes == {A: "runc-1.1", B: None}
