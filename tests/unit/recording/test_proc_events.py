"""Proc connector events: forks and exits of processes, threads left out."""

from __future__ import annotations

import struct

from secprofiles.recording.proc_events import (
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    Exit,
    Fork,
    listen_request,
    parse_proc_event,
)


def event(what: int, timestamp_ns: int, *fields: int) -> bytes:
    data = struct.pack("=IIQ", what, 0, timestamp_ns) + struct.pack(f"={len(fields)}i", *fields)
    cn_msg = struct.pack("=IIIIHH", 1, 1, 0, 0, len(data), 0) + data
    return struct.pack("=IHHII", 16 + len(cn_msg), 3, 0, 0, 0) + cn_msg


def test_a_new_process_and_its_exit() -> None:
    assert parse_proc_event(event(PROC_EVENT_FORK, 2_500_000_000, 10, 10, 11, 11)) == Fork(10, 11, 2.5)
    assert parse_proc_event(event(PROC_EVENT_EXIT, 3_000_000_000, 11, 11, 0, 17, 10, 10)) == Exit(11, 3.0)


def test_threads_other_events_and_short_datagrams_yield_nothing() -> None:
    assert parse_proc_event(event(PROC_EVENT_FORK, 1, 10, 10, 12, 10)) is None   # a thread of 10
    assert parse_proc_event(event(PROC_EVENT_EXIT, 1, 12, 10, 0, 0, 1, 1)) is None  # a thread's exit
    assert parse_proc_event(event(0x2, 1, 10, 10)) is None                           # exec
    assert parse_proc_event(event(PROC_EVENT_FORK, 1, 10, 10)) is None               # truncated fork
    assert parse_proc_event(b"\0" * 20) is None


def test_listen_request_layout() -> None:
    request = listen_request(1234)
    length, msg_type, _, _, port = struct.unpack_from("=IHHII", request)
    assert (length, msg_type, port) == (len(request), 3, 1234)
    assert struct.unpack_from("=IIIIHHI", request, 16) == (1, 1, 0, 0, 4, 0, 1)
