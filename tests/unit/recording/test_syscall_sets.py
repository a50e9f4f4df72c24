"""Syscall sets: names per architecture, unnamed numbers kept apart, deterministic merges."""

from __future__ import annotations

from secprofiles.recording.syscall_sets import SyscallSet, all_names, merge_reports


def test_report_names_per_architecture_and_keeps_unnamed_apart() -> None:
    syscalls = SyscallSet()
    assert syscalls.add("SCMP_ARCH_X86_64", 59)
    assert not syscalls.add("SCMP_ARCH_X86_64", 59)
    syscalls.add("SCMP_ARCH_X86_64", 0)
    syscalls.add("SCMP_ARCH_X86", 102)
    syscalls.add("SCMP_ARCH_X86_64", 9999)
    assert len(syscalls) == 4
    assert syscalls.report() == {"SCMP_ARCH_X86": ["socketcall"], "SCMP_ARCH_X86_64": ["execve", "read"]}
    assert syscalls.unnamed() == {"SCMP_ARCH_X86_64": [9999]}


def test_merge_reports_is_a_deterministic_union() -> None:
    merged = merge_reports([{"SCMP_ARCH_X86_64": ["read", "write"]}, {"SCMP_ARCH_X86_64": ["close", "read"]},
                            {"SCMP_ARCH_X86": ["socketcall"]}])
    assert merged == {"SCMP_ARCH_X86": ["socketcall"], "SCMP_ARCH_X86_64": ["close", "read", "write"]}
    assert all_names(merged) == ["close", "read", "socketcall", "write"]


def test_update_merges_sets() -> None:
    one, two = SyscallSet(), SyscallSet()
    one.add("SCMP_ARCH_X86_64", 0)
    two.add("SCMP_ARCH_X86_64", 1)
    two.runtime = "runc-1.1"
    one.update(two)
    assert one.report() == {"SCMP_ARCH_X86_64": ["read", "write"]}
    assert one.runtime == "runc-1.1" and len(one) == 2 and ("SCMP_ARCH_X86_64", 1) in one
