"""The ordering rules of ``record``: early records, the launcher's preamble, the barrier, strays; the kernel check."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.kernel_records import netlink, seccomp_text
from secprofiles.recording.command import RecordingError, SessionCollector, check_log_action_logged

SESSION, LAUNCHER, CHILD, BARRIER = 9, 100, 101, 200


def feed(collector: SessionCollector, pid: int, syscall: int, ses: int = SESSION, comm: str = "sh") -> None:
    collector.feed(netlink(seccomp_text(pid, syscall, ses=ses, comm=comm)))


def test_records_before_the_session_is_known_are_kept_and_the_launcher_preamble_dropped() -> None:
    collector = SessionCollector()
    feed(collector, LAUNCHER, 1, comm="python3")    # write: the launcher, after its filter, before exec
    feed(collector, LAUNCHER, 59, comm="python3")   # its execve: the command's first syscall
    feed(collector, LAUNCHER, 12)                   # brk, the command
    feed(collector, 555, 0, ses=3)                  # another session
    attribution = collector.start(SESSION, LAUNCHER)
    feed(collector, CHILD, 57)                      # fork's child: a later record
    assert collector.preamble == ["write", "execve"]
    assert attribution.syscalls.report() == {"SCMP_ARCH_X86_64": ["brk", "execve", "fork"]}
    assert attribution.pids == {LAUNCHER, CHILD}


def test_records_after_the_barrier_are_strays_and_before_it_count() -> None:
    collector = SessionCollector()
    attribution = collector.start(SESSION, LAUNCHER)
    feed(collector, LAUNCHER, 59)
    collector.barrier.pid = BARRIER
    feed(collector, CHILD, 0)                       # queued before the barrier: the command's
    feed(collector, BARRIER, 110, ses=4294967295)
    feed(collector, CHILD, 1)                       # after it: a descendant that outlived the command
    assert collector.barrier.seen.is_set()
    assert attribution.syscalls.report() == {"SCMP_ARCH_X86_64": ["execve", "read"]}
    assert collector.stray == {CHILD}


def test_unparsable_records_are_counted() -> None:
    collector = SessionCollector()
    collector.feed(netlink(b"audit(1.000:1): garbage"))
    collector.feed(netlink(b"not seccomp", 1320))
    assert collector.unparsed == 1


def test_a_kernel_that_does_not_log_the_log_action_is_named(tmp_path: Path) -> None:
    sysctl = tmp_path / "actions_logged"
    sysctl.write_text("kill_process kill_thread trap errno user_notif trace log\n")
    check_log_action_logged(sysctl)
    sysctl.write_text("kill_process kill_thread\n")
    with pytest.raises(RecordingError, match="seccomp's log action is not logged on this kernel"):
        check_log_action_logged(sysctl)
    with pytest.raises(RecordingError, match="kernel without seccomp"):
        check_log_action_logged(tmp_path / "missing")
