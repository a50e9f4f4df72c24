"""Syscall names and architectures as libseccomp knows them: the same library runc and crun use to build filters.

Names come from libseccomp, never from a table of our own: a number libseccomp cannot name has no name here
(``syscall_name`` returns None), and a name it does not know is not a syscall (``is_known``).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

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
# The architectures a kernel of the key's architecture also runs: containers-common's archMap in
# /usr/share/containers/seccomp.json (podman 4.3 / golang-github-containers-common on Debian bookworm), the table
# Docker and podman ship. A filter for a node lists them all, or a 32-bit program is killed as a "bad arch".
SUB_ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "SCMP_ARCH_X86_64": ("SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "SCMP_ARCH_AARCH64": ("SCMP_ARCH_ARM",),
    "SCMP_ARCH_MIPS64": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"),
    "SCMP_ARCH_MIPS64N32": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"),
    "SCMP_ARCH_MIPSEL64": ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"),
    "SCMP_ARCH_MIPSEL64N32": ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"),
    "SCMP_ARCH_S390X": ("SCMP_ARCH_S390",),
}
_UNKNOWN = -1  # libseccomp's __NR_SCMP_ERROR; other negative numbers are pseudo-syscalls of other arches


def arch_token(oci_name: str) -> int:
    """libseccomp's token for an OCI architecture name: the kernel's ``AUDIT_ARCH_*`` value (audit records'
    ``arch=``). ValueError for a name secprofiles does not know."""
    try:
        return int(getattr(pyseccomp.Arch, OCI_TO_LIBSECCOMP[oci_name]))
    except KeyError:
        raise ValueError(f"unknown architecture {oci_name!r}") from None


@cache
def _number(arch: str | None, name: str) -> int:
    target = pyseccomp.Arch.NATIVE if arch is None else arch_token(arch)
    return int(pyseccomp.resolve_syscall(target, name))


@cache
def syscall_name(arch: str, number: int) -> str | None:
    """libseccomp's name for syscall ``number`` on ``arch`` (OCI name); None when it has none (a syscall newer
    than the installed libseccomp, or no syscall at all)."""
    try:
        name = pyseccomp.resolve_syscall(arch_token(arch), number)
    except ValueError:
        return None
    return name.decode("ascii") if isinstance(name, bytes) else None


def node_architectures(native: str | None = None) -> tuple[str, ...]:
    """``native`` (default: this machine's) first, then the architectures its kernel runs too."""
    main = native or native_architecture()
    return (main, *SUB_ARCHITECTURES.get(main, ()))


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

