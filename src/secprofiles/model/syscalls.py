"""Syscall names as libseccomp knows them: the same library runc and crun use to build filters."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

import pyseccomp

# OCI architecture names to libseccomp's, and to the Go names Docker-style profiles use in archMap/includes.
OCI_TO_LIBSECCOMP = {
    "SCMP_ARCH_X86": "X86", "SCMP_ARCH_X86_64": "X86_64", "SCMP_ARCH_X32": "X32",
    "SCMP_ARCH_ARM": "ARM", "SCMP_ARCH_AARCH64": "AARCH64",
    "SCMP_ARCH_MIPS": "MIPS", "SCMP_ARCH_MIPS64": "MIPS64", "SCMP_ARCH_MIPS64N32": "MIPS64N32",
    "SCMP_ARCH_MIPSEL": "MIPSEL", "SCMP_ARCH_MIPSEL64": "MIPSEL64", "SCMP_ARCH_MIPSEL64N32": "MIPSEL64N32",
    "SCMP_ARCH_PPC": "PPC", "SCMP_ARCH_PPC64": "PPC64", "SCMP_ARCH_PPC64LE": "PPC64LE",
    "SCMP_ARCH_S390": "S390", "SCMP_ARCH_S390X": "S390X",
    "SCMP_ARCH_PARISC": "PARISC", "SCMP_ARCH_PARISC64": "PARISC64", "SCMP_ARCH_RISCV64": "RISCV64",
}
GO_ARCH_TO_OCI = {
    "amd64": "SCMP_ARCH_X86_64", "386": "SCMP_ARCH_X86", "x86": "SCMP_ARCH_X86", "x32": "SCMP_ARCH_X32",
    "arm64": "SCMP_ARCH_AARCH64", "arm": "SCMP_ARCH_ARM", "ppc64le": "SCMP_ARCH_PPC64LE",
    "ppc64": "SCMP_ARCH_PPC64", "s390x": "SCMP_ARCH_S390X", "s390": "SCMP_ARCH_S390",
    "riscv64": "SCMP_ARCH_RISCV64", "mips": "SCMP_ARCH_MIPS", "mipsle": "SCMP_ARCH_MIPSEL",
    "mips64": "SCMP_ARCH_MIPS64", "mips64le": "SCMP_ARCH_MIPSEL64",
}
_UNKNOWN = -1  # libseccomp's __NR_SCMP_ERROR; other negative numbers are pseudo-syscalls of other arches


def _arch(oci_name: str) -> Any:
    return getattr(pyseccomp.Arch, OCI_TO_LIBSECCOMP[oci_name])


@cache
def _number(arch: str | None, name: str) -> int:
    target = pyseccomp.Arch.NATIVE if arch is None else _arch(arch)
    return int(pyseccomp.resolve_syscall(target, name))


def native_architecture() -> str:
    """The OCI name of this machine's architecture, e.g. ``SCMP_ARCH_X86_64``."""
    native = pyseccomp.system_arch()
    for oci, lib in OCI_TO_LIBSECCOMP.items():
        if getattr(pyseccomp.Arch, lib) == native:
            return oci
    raise RuntimeError(f"libseccomp reports an architecture secprofiles does not know: {native}")


def is_known(name: str, architectures: Iterable[str] = ()) -> bool:
    """Whether ``name`` is a real syscall on at least one of ``architectures``.

    With no architectures, whether libseccomp knows the name at all (the filter then follows the node's
    own architecture, whichever that is).
    """
    arches = list(architectures)
    if not arches:
        return _number(None, name) != _UNKNOWN
    return any(_number(arch, name) >= 0 for arch in arches)

