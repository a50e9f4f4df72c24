"""The set of syscalls a recording accumulates for one target, and the small form agents report.

Pure. A set holds (OCI architecture, syscall number) pairs: at most a few hundred per architecture, whatever the
workload's syscall rate, so a recording's memory is bounded by the number of targets, never by events. It also
notes which measured container runtime's init process was among the target's processes (``runtime``), so the
runtime's measured post-filter syscalls can be added to the profile (``runtime_syscalls``).

Invariants:
- Names come from libseccomp for the pair's own architecture (``model.syscalls.syscall_name``); numbers libseccomp
  cannot name are kept apart (``unnamed``) and reported, never dropped silently.
- ``report()`` is deterministic (sorted) and holds names, not numbers: agents send sets, not events, and the
  operator merges reports by union without libseccomp's numbering.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from secprofiles.model.syscalls import syscall_name

Report = dict[str, list[str]]  # OCI architecture -> sorted syscall names


class SyscallSet:
    """(architecture, number) pairs seen for one target."""

    __slots__ = ("_numbers", "runtime")

    def __init__(self) -> None:
        self._numbers: dict[str, set[int]] = {}
        self.runtime: str | None = None  # label of the measured runtime whose init process made some of them

    def add(self, arch: str, number: int) -> bool:
        """Add one pair; True when it was new."""
        numbers = self._numbers.setdefault(arch, set())
        if number in numbers:
            return False
        numbers.add(number)
        return True

    def update(self, other: SyscallSet) -> None:
        """Add every pair of ``other`` (and its runtime, if this set has none)."""
        for arch, numbers in other._numbers.items():
            self._numbers.setdefault(arch, set()).update(numbers)
        self.runtime = self.runtime or other.runtime

    def __len__(self) -> int:
        return sum(len(numbers) for numbers in self._numbers.values())

    def __contains__(self, pair: object) -> bool:
        if not isinstance(pair, tuple) or len(pair) != 2:
            return False
        arch, number = pair
        return number in self._numbers.get(arch, ())

    def report(self) -> Report:
        """Names per architecture, sorted; unnamed numbers left out (see ``unnamed``)."""
        out: Report = {}
        for arch in sorted(self._numbers):
            names = sorted({name for n in self._numbers[arch] if (name := syscall_name(arch, n)) is not None})
            if names:
                out[arch] = names
        return out

    def unnamed(self) -> dict[str, list[int]]:
        """Numbers libseccomp has no name for, per architecture (a profile cannot allow them by name)."""
        out = {arch: sorted(n for n in numbers if syscall_name(arch, n) is None)
               for arch, numbers in sorted(self._numbers.items())}
        return {arch: numbers for arch, numbers in out.items() if numbers}


def merge_reports(reports: Iterable[Mapping[str, Iterable[str]]]) -> Report:
    """The union of several reports (replicas, nodes), deterministic."""
    merged: dict[str, set[str]] = {}
    for report in reports:
        for arch, names in report.items():
            merged.setdefault(arch, set()).update(names)
    return {arch: sorted(names) for arch, names in sorted(merged.items())}


def all_names(report: Mapping[str, Iterable[str]]) -> list[str]:
    """Every name of a report, whatever its architecture, sorted (what a profile's allow rule lists)."""
    return sorted({name for names in report.values() for name in names})
