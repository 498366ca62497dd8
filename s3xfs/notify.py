"""systemd's readiness protocol (sd_notify): one datagram to $NOTIFY_SOCKET, if it is set.

``READY=1`` goes out when the mount is usable (after FUSE INIT and tuning), ``STOPPING=1`` when
the daemon begins to unmount. Small enough to implement rather than depend on a library.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send ``message`` (e.g. "READY=1") to the service manager; False if there is none or it failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
