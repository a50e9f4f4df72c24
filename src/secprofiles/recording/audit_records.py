"""Kernel audit messages as they arrive on the audit netlink socket, and the SECCOMP record (type 1326).

Pure: bytes in, values out. A datagram holds one or more netlink messages (16-byte ``nlmsghdr`` each, padded to
4 bytes); a SECCOMP record's text is printed by the kernel's ``audit_seccomp`` (kernel/auditsc.c) in a fixed order:

    audit(SEC.MSEC:SERIAL): auid=U uid=U gid=G ses=S [subj=...] pid=P comm=C exe=E sig=N arch=HEX syscall=N
        compat=0|1 ip=0xHEX code=0xHEX

Invariants:
- ``comm`` and ``exe`` are "untrusted strings": quoted when plain, upper/lower-case hex when they contain a space,
  a quote or a control/non-ASCII byte, ``(null)`` when absent; they are decoded here, never guessed.
- A record that does not parse raises ``AuditParseError`` naming the field and the reason; nothing is silently
  dropped by this module (the caller counts and reports such records).
- ``code`` is the seccomp action (``SECCOMP_RET_ACTION_FULL``); the kernel strips the data bits, so a record cannot
  tell which filter produced it (attribution must come from pid, session or cgroup). Only ``SECCOMP_RET_LOG``
  records are what a logging filter let through; other actions (a nested filter's logged denial) are not.
- ``arch=`` is libseccomp's architecture token (the kernel's ``AUDIT_ARCH_*``), except x32: the kernel reports
  x32 syscalls as ``AUDIT_ARCH_X86_64`` with ``__X32_SYSCALL_BIT`` set in the number (``record_architecture``).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import NoReturn

from secprofiles.model.syscalls import OCI_TO_LIBSECCOMP, arch_token

AUDIT_SECCOMP = 1326
NLMSG_HEADER = struct.Struct("=IHHII")
SECCOMP_RET_LOG = 0x7FFC0000
X32_SYSCALL_BIT = 0x40000000


class AuditParseError(ValueError):
    """A message that is not what the kernel prints; ``field`` names the part that is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NetlinkMessage:
    type: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class SeccompRecord:
    """One syscall a seccomp filter logged. ``pid`` is the thread group id in the initial pid namespace."""

    time: float  # wall clock (CLOCK_REALTIME, coarse: the kernel's tick) when the syscall was made
    serial: int
    pid: int
    arch: int
    syscall: int
    ses: int
    auid: int
    uid: int
    comm: str | None
    exe: str | None
    action: int

    @property
    def logged(self) -> bool:
        """Made under a logging filter (``SCMP_ACT_LOG``), not a denial some other filter logged."""
        return self.action == SECCOMP_RET_LOG


def seccomp_records(datagram: bytes) -> tuple[list[SeccompRecord], int]:
    """The SECCOMP records of one datagram, and how many SECCOMP messages did not parse (for the caller to count).

    Other audit message types are skipped: the multicast group carries every record the kernel emits.
    """
    records: list[SeccompRecord] = []
    unparsed = 0
    for message in split_datagram(datagram):
        if message.type != AUDIT_SECCOMP:
            continue
        try:
            records.append(parse_seccomp_record(message.payload))
        except AuditParseError:
            unparsed += 1
    return records, unparsed


@cache
def _oci_by_token() -> dict[int, str]:
    return {arch_token(name): name for name in OCI_TO_LIBSECCOMP}


def record_architecture(audit_arch: int, syscall: int) -> str | None:
    """The OCI architecture of a logged syscall (x32 recognised by its number); None for one libseccomp lacks."""
    name = _oci_by_token().get(audit_arch)
    if name == "SCMP_ARCH_X86_64" and syscall & X32_SYSCALL_BIT:
        return "SCMP_ARCH_X32"
    return name


def split_datagram(data: bytes) -> Iterator[NetlinkMessage]:
    """The netlink messages of one datagram, in order."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < NLMSG_HEADER.size:
            raise AuditParseError("nlmsghdr", f"{len(data) - offset} trailing bytes, shorter than a header")
        length, msg_type, _flags, _seq, _port = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size or offset + length > len(data):
            raise AuditParseError("nlmsghdr.nlmsg_len", f"{length} does not fit the {len(data) - offset} bytes left")
        yield NetlinkMessage(msg_type, data[offset + NLMSG_HEADER.size:offset + length])
        offset += (length + 3) & ~3


_SECCOMP = re.compile(
    rb"audit\((?P<seconds>\d+)\.(?P<millis>\d+):(?P<serial>\d+)\):"
    rb" auid=(?P<auid>\d+) uid=(?P<uid>\d+) gid=\d+ ses=(?P<ses>\d+)(?: subj\w*=\S+)*"
    rb" pid=(?P<pid>\d+) comm=(?P<comm>\S+) exe=(?P<exe>\S+) sig=-?\d+ arch=(?P<arch>[0-9a-fA-F]+)"
    rb" syscall=(?P<syscall>-?\d+) compat=\d+ ip=0x[0-9a-fA-F]+ code=0x(?P<code>[0-9a-fA-F]+)")
_REQUIRED = ("auid", "uid", "ses", "pid", "comm", "exe", "arch", "syscall", "code")
_NUMBERS = {"auid": 10, "uid": 10, "ses": 10, "pid": 10, "syscall": 10, "arch": 16, "code": 16}


def parse_seccomp_record(payload: bytes) -> SeccompRecord:
    """Parse the text of a type-1326 message (trailing NULs allowed)."""
    text = payload.rstrip(b"\0\n")
    match = _SECCOMP.match(text)
    if match is None:
        _explain_mismatch(text)
    return SeccompRecord(
        time=int(match["seconds"]) + int(match["millis"]) / 1000, serial=int(match["serial"]),
        pid=int(match["pid"]), arch=int(match["arch"], 16), syscall=int(match["syscall"]), ses=int(match["ses"]),
        auid=int(match["auid"]), uid=int(match["uid"]),
        comm=decode_untrusted(match["comm"], "comm"), exe=decode_untrusted(match["exe"], "exe"),
        action=int(match["code"], 16))


def _explain_mismatch(text: bytes) -> NoReturn:
    """Raise an AuditParseError naming the first field that is missing or malformed (the slow path)."""
    if not re.match(rb"audit\(\d+\.\d+:\d+\): ", text):
        raise AuditParseError("header", f"expected 'audit(SEC.MSEC:SERIAL): ', got {text[:40]!r}")
    fields: dict[str, bytes] = {}
    for token in text.split(b" ")[1:]:
        key, sep, value = token.partition(b"=")
        if sep:
            fields.setdefault(key.decode("ascii", "replace"), value)
    for name in _REQUIRED:
        if name not in fields:
            raise AuditParseError(name, "missing")
        base = _NUMBERS.get(name)
        if base is not None:
            value = fields[name].removeprefix(b"0x")
            try:
                int(value, base)
            except ValueError:
                raise AuditParseError(name, f"not a base-{base} number: {fields[name]!r}") from None
    raise AuditParseError("record", f"fields out of the kernel's order: {text[:120]!r}")


def decode_untrusted(value: bytes, field: str) -> str | None:
    """Decode an audit "untrusted string" (``audit_log_untrustedstring``): quoted, hex, or ``(null)``."""
    if value == b"(null)":
        return None
    if value.startswith(b'"'):
        if len(value) < 2 or not value.endswith(b'"'):
            raise AuditParseError(field, f"unterminated quoted string {value!r}")
        return value[1:-1].decode("utf-8", "surrogateescape")
    try:
        return bytes.fromhex(value.decode("ascii")).decode("utf-8", "surrogateescape")
    except ValueError:
        raise AuditParseError(field, f"neither a quoted nor a hex-encoded string: {value!r}") from None
