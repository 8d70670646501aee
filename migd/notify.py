"""sd_notify(3): how the daemon tells systemd where it stands.

A few lines of our own rather than the ``sdnotify`` package: that package encodes
messages as Latin-1, and systemd ignores a ``STATUS=`` that is not valid UTF-8, so
"applying 1g.18gb×2 …" would vanish from ``systemctl status``. It also connects
once at start; sending each datagram to the address keeps working across
``systemctl daemon-reexec``.

The receiving end, as systemd runs it, lives here too (``NotifyReceiver``): the
tests and the benchmarks watch a daemon through it where there is no systemd, and
both read the daemon's datagrams the same way.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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


# ---------------------------------------------------------------------------
# The receiving end: systemd's side of NOTIFY_SOCKET, for tests and benchmarks
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NotifyMessage:
    """One sd_notify datagram: when it arrived (``time.monotonic()``) and its assignments."""

    at: float
    fields: Mapping[str, str]

    def has(self, assignment: str) -> bool:
        """Whether the datagram carries ``VAR=value`` exactly (``"READY=1" in m`` says the same)."""
        name, _, value = assignment.partition("=")
        return self.fields.get(name) == value

    def __contains__(self, assignment: str) -> bool:
        return self.has(assignment)


class NotifyReceiver:
    """A NOTIFY_SOCKET as systemd holds it, read by a thread: the daemon seen from outside.

    Used to watch a daemon without systemd (the tests and the benchmarks). The socket
    is in the abstract namespace, so a long temporary directory cannot push its
    address past the 108 bytes of ``sun_path``. Every message is stamped with
    ``time.monotonic()`` as it arrives and kept in order; a message's position in
    that order is what ``wait(after=...)`` and ``since()`` count from.
    """

    def __init__(self, prefix: str = "migd-notify", *, timeout: float = 60.0) -> None:
        """``prefix`` begins the socket's name; ``timeout`` is how long ``wait`` waits
        unless told otherwise, in seconds."""
        # os.urandom rather than uuid: this module is imported by the daemon, whose
        # footprint the benchmarks measure, and a random name needs nothing more.
        name = f"{prefix}-{os.urandom(16).hex()}"
        self.address = "@" + name
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + name)
        # The reading thread looks at _closed this often: how long close() may take.
        self._sock.settimeout(0.1)
        self._messages: list[NotifyMessage] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="notify-receiver", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            # Stamped before parsing: the arrival is what the waits and the benchmarks time.
            at = time.monotonic()
            # Undecodable bytes are replaced rather than fatal: the thread must go on
            # reading, and a wrong STATUS= then shows in the assertion that reads it.
            lines = data.decode(errors="replace").split("\n")
            fields = dict(line.split("=", 1) for line in lines if "=" in line)
            with self._cond:
                self._messages.append(NotifyMessage(at, fields))
                self._cond.notify_all()

    def count(self) -> int:
        """How many messages have arrived: a mark to wait from (``after=``)."""
        with self._cond:
            return len(self._messages)

    def since(self, position: int) -> list[NotifyMessage]:
        """The messages from ``position`` on, as received so far."""
        with self._cond:
            return self._messages[position:]

    def snapshot(self) -> list[NotifyMessage]:
        """Every message received so far."""
        return self.since(0)

    def statuses(self) -> list[str]:
        """The ``STATUS=`` lines received so far, in order."""
        return [m.fields["STATUS"] for m in self.snapshot() if "STATUS" in m.fields]

    def wait(
        self,
        match: Callable[[NotifyMessage], bool],
        what: str,
        *,
        after: int = 0,
        timeout: float | None = None,
    ) -> tuple[int, NotifyMessage]:
        """The first message from position ``after`` on that matches, and its position.

        Raises TimeoutError naming ``what`` when none has come within ``timeout``
        seconds (the receiver's own ``timeout`` when not given).
        """
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._cond:
            while True:
                for i in range(after, len(self._messages)):
                    if match(self._messages[i]):
                        return i, self._messages[i]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {what} within {limit:g} s")
                self._cond.wait(left)

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=2)
        self._sock.close()
