"""The TCP sockets a local process listens on, read from Linux's ``/proc``.

The engine replica's URL is not part of ``GET /v1/pools`` (PLACE-5009), so a benchmark
that calls the engine directly finds its port from the replica's ``pid`` instead, and a
test checks with the same function that the port is bound to loopback only.
"""

from __future__ import annotations

import ipaddress
import os
import pathlib

__all__ = ["listening_addresses"]

_LISTEN = "0A"
"""``st`` of a listening socket in ``/proc/net/tcp``."""


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = pathlib.Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # the descriptor closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _address(hex_addr: str, v6: bool) -> str:
    raw = bytes.fromhex(hex_addr)
    if v6:  # four host-order 32-bit words
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        return str(ipaddress.IPv6Address(raw))
    return str(ipaddress.IPv4Address(raw[::-1]))


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """Every ``(host, port)`` on which process ``pid`` holds a listening TCP socket.

    Args:
        pid: a process of this machine (Linux ``/proc``).

    Returns:
        ``[(host, port)]`` sorted, host as text (``127.0.0.1``, ``0.0.0.0``, ``::1``).

    Raises:
        FileNotFoundError: no such process (or no ``/proc``).
        PermissionError: the process belongs to another user.
    """
    inodes = _socket_inodes(pid)
    found = []
    for table, v6 in (("tcp", False), ("tcp6", True)):
        path = pathlib.Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == _LISTEN and cols[9] in inodes:
                host, port = cols[1].split(":")
                found.append((_address(host, v6), int(port, 16)))
    return sorted(found)
