"""Process events of the kernel's proc connector (``linux/cn_proc.h``): forks and exits, parsed. Pure.

A datagram is a ``nlmsghdr`` (16 bytes), a ``cn_msg`` (20 bytes) and a ``proc_event``: ``what`` (u32), ``cpu``
(u32), ``timestamp_ns`` (u64, CLOCK_MONOTONIC), then the event's fields. Only new processes (a fork whose child
is a thread group leader) and process exits (the leader's) matter for attribution; threads are left out.

Invariant: a short or unknown datagram yields no event, never an exception: the kernel may add event types.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXIT = 0x80000000
_HEADER = struct.Struct("=IHHII")       # nlmsghdr
_CN_MSG = struct.Struct("=IIIIHH")      # cn_msg: idx, val, seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")          # proc_event: what, cpu, timestamp_ns
_FORK = struct.Struct("=iiii")          # parent_pid, parent_tgid, child_pid, child_tgid
_EXIT = struct.Struct("=ii")            # process_pid, process_tgid
_START = _HEADER.size + _CN_MSG.size


@dataclass(frozen=True, slots=True)
class Fork:
    parent: int       # tgid of the forking process
    child: int        # pid (= tgid) of the new process
    monotonic: float  # seconds, CLOCK_MONOTONIC


@dataclass(frozen=True, slots=True)
class Exit:
    pid: int
    monotonic: float


def parse_proc_event(datagram: bytes) -> Fork | Exit | None:
    if len(datagram) < _START + _EVENT.size:
        return None
    what, _cpu, timestamp = _EVENT.unpack_from(datagram, _START)
    data = _START + _EVENT.size
    seconds = timestamp / 1e9
    if what == PROC_EVENT_FORK and len(datagram) >= data + _FORK.size:
        _parent_pid, parent_tgid, child_pid, child_tgid = _FORK.unpack_from(datagram, data)
        return Fork(parent_tgid, child_pid, seconds) if child_pid == child_tgid else None
    if what == PROC_EVENT_EXIT and len(datagram) >= data + _EXIT.size:
        pid, tgid = _EXIT.unpack_from(datagram, data)
        return Exit(pid, seconds) if pid == tgid else None
    return None


def listen_request(port: int) -> bytes:
    """The message that subscribes a connector socket to process events (PROC_CN_MCAST_LISTEN)."""
    payload = struct.pack("=I", 1)
    cn_msg = _CN_MSG.pack(1, 1, 0, 0, len(payload), 0) + payload
    return _HEADER.pack(_HEADER.size + len(cn_msg), 3, 0, 0, port) + cn_msg  # NLMSG_DONE
