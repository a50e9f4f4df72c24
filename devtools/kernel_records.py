"""Audit messages as the kernel prints them (kernel/auditsc.c audit_seccomp), for tests and benchmarks of the recorder's
pure parts (no socket, no privilege)."""

from __future__ import annotations

import struct

from secprofiles.recording.audit_records import AUDIT_SECCOMP

X86_64 = 0xC000003E
X86 = 0x40000003
# Copied from a record received on this machine (podman + runc, kernel 6.18).
REAL = (b'audit(1796301875.406:2): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=13115 comm="python3" '
        b'exe="/root/.pyenv/versions/3.11.7/bin/python3.11" sig=0 arch=c000003e syscall=436 compat=0 '
        b'ip=0x7f2050b1ac57 code=0x7ffc0000')


def seccomp_text(pid: int, syscall: int, *, ses: int = 7, arch: int = X86_64, comm: str = "sh",
                 exe: str = "/bin/busybox", time: float = 1000.0, serial: int = 1, code: int = 0x7FFC0000) -> bytes:
    """The text of one SECCOMP record (``code``: the action, SCMP_ACT_LOG by default)."""
    seconds, millis = int(time), round((time - int(time)) * 1000)
    return (f'audit({seconds}.{millis:03d}:{serial}): auid=0 uid=0 gid=0 ses={ses} pid={pid} comm="{comm}" '
            f'exe="{exe}" sig=0 arch={arch:x} syscall={syscall} compat={int(arch == X86)} ip=0x7f0000001000 '
            f'code={code:#x}').encode()


def netlink(payload: bytes, msg_type: int = AUDIT_SECCOMP) -> bytes:
    """One netlink message, padded to 4 bytes as the kernel does."""
    header = struct.pack("=IHHII", 16 + len(payload), msg_type, 0, 0, 0)
    return header + payload + b"\0" * (-(16 + len(payload)) % 4)
