"""What the audit and the proc connector sockets share: netlink multicast receive buffers and draining. I/O.

Invariants: a multicast member loses messages only when its receive buffer is full; the kernel then drops the
copy and the next receive fails with ``ENOBUFS``. ``drain`` counts those failures (the caller must report them:
what it read is incomplete), never raises them. ``SO_RCVBUFFORCE`` (needs ``CAP_NET_ADMIN``) lifts the buffer
above ``net.core.rmem_max``; without that capability the buffer is capped there (212,992 B by default).
"""

from __future__ import annotations

import errno
import socket

SO_RCVBUFFORCE = 33  # not exported by Python's socket module


def set_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for ``size`` bytes of receive buffer: forced with CAP_NET_ADMIN, else capped at ``rmem_max``."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def drain(sock: socket.socket, message_size: int, limit: int) -> tuple[list[bytes], int]:
    """Every datagram queued on the non-blocking ``sock`` now (at most ``limit``), and how many overruns."""
    datagrams: list[bytes] = []
    overruns = 0
    while len(datagrams) < limit:
        try:
            datagrams.append(sock.recv(message_size))
        except BlockingIOError:
            break
        except OSError as error:
            if error.errno != errno.ENOBUFS:
                raise
            overruns += 1
    return datagrams, overruns
