"""Reads of /proc for attribution: a process's start time and its cgroups. The I/O side of ``attribution``.

Invariants:
- ``/proc/<pid>/stat``'s command name may hold spaces and parentheses: fields are counted after the last ``)``.
- A process that is gone (or a zombie, whose cgroups the kernel already reset to the root) reads as ``None``:
  a zombie's ``/proc/<pid>/cgroup`` shows ``/`` on every hierarchy here (measured), which must never be taken
  for "not in a container".
- ``boot_time_realtime`` converts start times (clock ticks since boot, CLOCK_BOOTTIME) to the wall clock that
  audit record timestamps use, so the attributor can tell a record made before a process existed.
"""

from __future__ import annotations

import os
import time

from secprofiles.recording.attribution import ProcessSnapshot


class ProcFs:
    """The ``ProcessTable`` of ``attribution`` over a real (or a host's mounted) /proc."""

    def __init__(self, root: str = "/proc") -> None:
        self._root = root
        self.ticks_per_second = os.sysconf("SC_CLK_TCK")

    def start_ticks(self, pid: int) -> int | None:
        """Field 22 of /proc/<pid>/stat, None when the process is gone or a zombie."""
        try:
            with open(f"{self._root}/{pid}/stat", "rb") as stat:
                text = stat.read()
        except (FileNotFoundError, ProcessLookupError):
            return None
        fields = text[text.rindex(b")") + 2:].split()
        if fields[0] == b"Z":  # field 3: a zombie's cgroups are already reset
            return None
        return int(fields[19])  # field 22 counted from 1; fields[0] is field 3

    def snapshot(self, pid: int) -> ProcessSnapshot | None:
        """Start time and cgroup text of one process, consistent: the start time is read before and after."""
        before = self.start_ticks(pid)
        if before is None:
            return None
        try:
            with open(f"{self._root}/{pid}/cgroup") as cgroup:
                text = cgroup.read()
        except (FileNotFoundError, ProcessLookupError):
            return None
        return ProcessSnapshot(before, text) if self.start_ticks(pid) == before else None


def boot_time_realtime() -> float:
    """The wall-clock time (CLOCK_REALTIME) of boot, as CLOCK_BOOTTIME counts it, to a few microseconds."""
    return time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_BOOTTIME)
