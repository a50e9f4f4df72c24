"""Parsing what the kernel sends: netlink framing, SECCOMP records, their architecture."""

from __future__ import annotations

import pytest

from devtools.kernel_records import REAL, X86, X86_64, netlink, seccomp_text
from secprofiles.recording.audit_records import (
    SECCOMP_RET_LOG,
    X32_SYSCALL_BIT,
    AuditParseError,
    decode_untrusted,
    parse_seccomp_record,
    record_architecture,
    seccomp_records,
    split_datagram,
)


def test_a_record_received_on_this_machine_parses() -> None:
    record = parse_seccomp_record(REAL + b"\0")
    assert (record.pid, record.syscall, record.arch, record.ses, record.auid, record.uid) == (
        13115, 436, 0xC000003E, 4294967295, 4294967295, 0)
    assert record.comm == "python3" and record.exe == "/root/.pyenv/versions/3.11.7/bin/python3.11"
    assert record.action == SECCOMP_RET_LOG and record.serial == 2
    assert record.time == pytest.approx(1796301875.406)


def test_untrusted_strings_hex_encoded_or_null() -> None:
    text = REAL.replace(b'comm="python3"', b"comm=72756E633A5B323A494E49545D20").replace(
        b'exe="/root/.pyenv/versions/3.11.7/bin/python3.11"', b"exe=(null)")
    record = parse_seccomp_record(text)
    assert record.comm == "runc:[2:INIT] " and record.exe is None


def test_lsm_subject_fields_are_skipped() -> None:
    text = REAL.replace(b" pid=", b" subj=unconfined subj_apparmor=x pid=")
    assert parse_seccomp_record(text).pid == 13115


def test_compat_record() -> None:
    record = parse_seccomp_record(seccomp_text(5, 102, arch=X86))
    assert (record.arch, record.syscall) == (X86, 102)


@pytest.mark.parametrize(("text", "field"), [
    (REAL.replace(b" pid=13115", b""), "pid"),
    (REAL.replace(b"syscall=436", b"syscall=x36"), "syscall"),
    (REAL.replace(b"arch=c000003e", b"arch=zz"), "arch"),
    (b"type=SECCOMP msg=" + REAL, "header"),
    (REAL.replace(b'comm="python3"', b'comm="python3'), "comm"),
    (REAL.replace(b'comm="python3"', b"comm=xyz"), "comm"),
    (REAL.replace(b" sig=0 arch=c000003e", b" arch=c000003e sig=0"), "record"),
])
def test_malformed_records_name_the_field(text: bytes, field: str) -> None:
    with pytest.raises(AuditParseError) as error:
        parse_seccomp_record(text)
    assert error.value.field == field


def test_datagram_with_two_padded_messages() -> None:
    first, second = seccomp_text(1, 2), seccomp_text(3, 4) + b"x"
    messages = list(split_datagram(netlink(first) + netlink(second, 1320)))
    assert [(m.type, m.payload) for m in messages] == [(1326, first), (1320, second)]


@pytest.mark.parametrize(("data", "field"), [
    (netlink(b"abc")[:10], "nlmsghdr"),
    (netlink(b"abcdef")[:-4], "nlmsghdr.nlmsg_len"),
])
def test_truncated_datagrams_are_errors(data: bytes, field: str) -> None:
    with pytest.raises(AuditParseError) as error:
        list(split_datagram(data))
    assert error.value.field == field


def test_decode_untrusted_keeps_non_utf8_bytes() -> None:
    assert decode_untrusted(b"FF41", "comm") == "\udcffA"


def test_seccomp_records_of_a_datagram_skip_other_types_and_count_the_unparsable() -> None:
    datagram = netlink(seccomp_text(1, 2)) + netlink(b"other record", 1320) + netlink(b"audit(1.000:1): garbage")
    records, unparsed = seccomp_records(datagram)
    assert [(r.pid, r.syscall) for r in records] == [(1, 2)] and unparsed == 1


def test_only_log_actions_are_logged_records() -> None:
    assert parse_seccomp_record(seccomp_text(1, 2)).logged
    assert not parse_seccomp_record(seccomp_text(1, 2, code=0x50000)).logged  # SCMP_ACT_ERRNO of a nested filter


def test_x32_syscalls_are_recognised_by_their_number() -> None:
    assert record_architecture(X86_64, 0) == "SCMP_ARCH_X86_64"
    assert record_architecture(X86_64, X32_SYSCALL_BIT | 0) == "SCMP_ARCH_X32"
    assert record_architecture(X86, 11) == "SCMP_ARCH_X86"
    assert record_architecture(0x1234, 0) is None
