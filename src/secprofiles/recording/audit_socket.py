"""The audit netlink socket's read-only multicast group: where SECCOMP records arrive, for any number of readers.

I/O. ``socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT)`` bound to group 1 (``AUDIT_NLGRP_READLOG``) receives a copy of
every audit record the kernel emits, without registering as auditd (auditd may run or not) and without changing
any audit setting.

Invariants and facts this module relies on (measured on kernel 6.18):
- Joining the group needs ``CAP_AUDIT_READ`` in the initial user namespace; records are multicast only in the
  initial network namespace (a reader elsewhere binds fine and receives nothing: ``hostNetwork`` for a pod; the
  barrier of ``audit_barrier`` detects it).
- The kernel never rate-limits this path (the kernel log is rate-limited, this is not); it back-pressures the
  logging process when its backlog is full. The only loss is at this socket (``netlink.drain``): every overrun is
  counted in ``overruns``; a recording with overruns is incomplete and must say so, never pass as complete.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

from secprofiles.recording.netlink import drain, set_receive_buffer

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
MAX_AUDIT_MESSAGE = 8970 + 16  # MAX_AUDIT_MESSAGE_LENGTH plus the netlink header
DEFAULT_RECEIVE_BUFFER = 64 << 20  # no overrun in 200,000 records of a syscall loop (4 overruns at rmem_max)
BATCH = 4096


class AuditUnavailable(RuntimeError):
    """This process cannot read audit records here; the message says why and what is needed."""


class AuditMulticastSocket:
    """A non-blocking member of the audit read-only multicast group."""

    def __init__(self, receive_buffer: int = DEFAULT_RECEIVE_BUFFER) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_AUDIT)
        except OSError as error:
            raise AuditUnavailable(
                f"cannot open an audit netlink socket ({error.strerror}): the kernel has no audit support "
                "(CONFIG_AUDIT) or audit netlink is not available in this network namespace") from error
        try:
            set_receive_buffer(self._sock, receive_buffer)
            self._sock.bind((0, AUDIT_NLGRP_READLOG))
        except PermissionError as error:
            self._sock.close()
            raise AuditUnavailable(
                "joining the audit multicast group needs CAP_AUDIT_READ (run as root, or grant CAP_AUDIT_READ; "
                "in a pod: capabilities.add [AUDIT_READ], hostNetwork: true)") from error
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.overruns = 0

    def read_available(self) -> list[bytes]:
        """Every datagram queued now (at most a batch), without waiting; overruns are counted."""
        batch, overruns = drain(self._sock, MAX_AUDIT_MESSAGE, BATCH)
        self.overruns += overruns
        return batch

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Batches of datagrams as they arrive; waits in the event loop (no thread, no polling)."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(self._sock.fileno(), ready.set)
        try:
            while True:
                await ready.wait()
                ready.clear()
                while batch := self.read_available():
                    yield batch
        finally:
            loop.remove_reader(self._sock.fileno())

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AuditMulticastSocket:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
