"""systemd's notify protocol (sd_notify): READY, STATUS, WATCHDOG and STOPPING datagrams to $NOTIFY_SOCKET.

Written by hand: the protocol is one datagram of KEY=VALUE lines to a Unix socket, and the
libraries that wrap it either need libsystemd (systemd-python) or are unmaintained.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


class Notifier:
    """Sends to the socket systemd names in NOTIFY_SOCKET; does nothing when it names none."""

    def __init__(self, environ: dict[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog = _watchdog_seconds(environ)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self.address else None

    def send(self, **fields: str) -> None:
        """One datagram, e.g. ``send(READY="1", STATUS="2 pairs streaming")``; a failure is logged, never raised."""
        if self._socket is None:
            return
        text = "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        try:
            self._socket.sendto(text.encode("utf-8"), self.address)
        except OSError as exc:
            logger.debug("sd_notify to %s failed: %s", self.address, exc)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()


def _watchdog_seconds(environ: dict[str, str]) -> float | None:
    """WatchdogSec as systemd passes it (WATCHDOG_USEC, for this process when WATCHDOG_PID is set)."""
    usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000
