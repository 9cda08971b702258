"""systemd notification protocol (sd_notify): READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1.

Writes datagrams to $NOTIFY_SOCKET when systemd set it (Type=notify); a no-op otherwise.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send one notification; returns whether there was a socket to send it to."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd asked for (WATCHDOG_USEC), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
