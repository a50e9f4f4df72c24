"""Syscall numbers, names and architectures through libseccomp (``model.syscalls``), as the recorder uses them."""

from __future__ import annotations

import pytest

from devtools.kernel_records import X86, X86_64
from secprofiles.model.syscalls import arch_token, node_architectures, syscall_name


def test_audit_arch_values_are_libseccomp_tokens() -> None:
    assert arch_token("SCMP_ARCH_X86_64") == X86_64 and arch_token("SCMP_ARCH_X86") == X86
    with pytest.raises(ValueError, match="SCMP_ARCH_Z80"):
        arch_token("SCMP_ARCH_Z80")


def test_names_come_from_libseccomp_per_architecture() -> None:
    assert syscall_name("SCMP_ARCH_X86_64", 59) == "execve"
    assert syscall_name("SCMP_ARCH_X86", 11) == "execve"
    assert syscall_name("SCMP_ARCH_X86", 102) == "socketcall"
    assert syscall_name("SCMP_ARCH_X32", 0x40000000) == "read"
    assert syscall_name("SCMP_ARCH_X86_64", 9999) is None


def test_node_architectures_follow_containers_commons_arch_map() -> None:
    assert node_architectures("SCMP_ARCH_X86_64") == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
    assert node_architectures("SCMP_ARCH_AARCH64") == ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM")
    assert node_architectures("SCMP_ARCH_RISCV64") == ("SCMP_ARCH_RISCV64",)
    assert node_architectures()[0] == "SCMP_ARCH_X86_64"  # this machine
