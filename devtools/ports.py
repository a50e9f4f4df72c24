"""Free TCP ports on 127.0.0.1, for the processes dev tooling starts."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """Ask the kernel for ``n`` distinct free TCP ports on 127.0.0.1 (another process may take one before it is
    bound: callers that can retry do)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    """One free TCP port on 127.0.0.1 (see ``free_ports``)."""
    return free_ports(1)[0]
