"""Free loopback ports, and whether something listens on one.

    port = free_port()                 # bind it yourself soon: another process may take it first
    assert not accepts_connections(port)
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now. It is free only until someone binds it: a server
    started on it can lose the race, which is why the service starters retry on a new port."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def accepts_connections(port: int, host: str = LOOPBACK, timeout_s: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` is accepted (something listens there)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
