"""Host ports that are free right now, for the real servers and VMs the tests start."""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """Distinct ports free right now (all held open together so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]
