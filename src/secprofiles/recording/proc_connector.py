"""The kernel's proc connector socket: fork and exit events of every process on the node, as they happen.

I/O. ``socket(AF_NETLINK, SOCK_DGRAM, NETLINK_CONNECTOR)`` bound to ``CN_IDX_PROC`` and subscribed with
``PROC_CN_MCAST_LISTEN``. Needs CAP_NET_ADMIN and the initial pid namespace (the kernel ignores the request
elsewhere). A fork event is queued on this socket inside fork(), before the child runs, so it is here before any
audit record of the child can be: draining this socket before each batch of audit records gives every child's
parent in time, even for a child that exited long ago.

Invariants: non-blocking; overruns (events dropped: the socket buffer was full) are counted in ``overruns``, and
attribution then falls back to /proc lookups for the children it missed.
"""

from __future__ import annotations

import socket
import time

from secprofiles.recording.netlink import drain, set_receive_buffer
from secprofiles.recording.proc_events import Exit, Fork, listen_request, parse_proc_event

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
EVENT_SIZE = 256  # a proc_event datagram is well below this
DEFAULT_RECEIVE_BUFFER = 16 << 20


class ProcConnectorUnavailable(RuntimeError):
    """The proc connector cannot be read here; the message says what is needed."""


class ProcConnector:
    """A non-blocking subscriber to process events."""

    def __init__(self, receive_buffer: int = DEFAULT_RECEIVE_BUFFER) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR)
            set_receive_buffer(self._sock, receive_buffer)
            self._sock.bind((0, CN_IDX_PROC))
            self._sock.send(listen_request(self._sock.getsockname()[0]))
        except OSError as error:
            raise ProcConnectorUnavailable(
                f"proc connector: {error.strerror} (needs CONFIG_PROC_EVENTS, CAP_NET_ADMIN and the host's pid "
                "namespace)") from error
        self._sock.setblocking(False)
        # timestamp_ns is CLOCK_MONOTONIC; audit records use the wall clock
        self.realtime_offset = time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)
        self.overruns = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_available(self) -> list[Fork | Exit]:
        """The fork and exit events queued now (threads and other events left out)."""
        events: list[Fork | Exit] = []
        while True:
            datagrams, overruns = drain(self._sock, EVENT_SIZE, 4096)
            self.overruns += overruns
            events += [event for datagram in datagrams if (event := parse_proc_event(datagram)) is not None]
            if not datagrams:
                break
        return events

    def close(self) -> None:
        self._sock.close()
