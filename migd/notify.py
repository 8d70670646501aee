"""sd_notify(3): how the daemon tells systemd where it stands.

A few lines of our own rather than the ``sdnotify`` package: that package encodes
messages as Latin-1, and systemd ignores a ``STATUS=`` that is not valid UTF-8, so
"applying 1g.18gb×2 …" would vanish from ``systemctl status``. It also connects
once at start; sending each datagram to the address keeps working across
``systemctl daemon-reexec``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping

from migd.status import DaemonObserver, DaemonView

log = logging.getLogger("migd.notify")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock of ``MONOTONIC_USEC=``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog interval systemd expects pings within, in seconds, or None.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for: a child
    that inherited the environment must not believe it is watched (sd_watchdog_enabled).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """Sends sd_notify datagrams to ``NOTIFY_SOCKET``; does nothing when it is unset."""

    def __init__(self, address: str | None) -> None:
        # An address starting with '@' is in the abstract namespace.
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> None:
        """Send ``VAR=value`` assignments together, in one datagram.

        systemd reads one datagram as one message: ``RELOADING=1`` must arrive with
        its ``MONOTONIC_USEC=``. A failure to send is logged once and otherwise ignored:
        losing systemd must not stop the daemon from keeping the GPUs right.
        """
        if self._address is None:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._socket.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self._address, exc)
                self._warned = True

    def ready(self) -> None:
        self.send("READY=1")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, line: str) -> None:
        # STATUS= is one line: a newline would end the assignment early.
        self.send("STATUS=" + " ".join(line.split()))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class SystemdStatus(DaemonObserver):
    """The observer that shows the daemon's status line in ``systemctl status``."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._shown: str | None = None

    def published(self, view: DaemonView) -> None:
        if view.status_line != self._shown:
            self._notifier.status(view.status_line)
            self._shown = view.status_line
