"""sd_notify(3): how the daemon tells systemd where it stands.

A few lines of our own rather than the ``sdnotify`` package: that package encodes
messages as Latin-1, and systemd ignores a ``STATUS=`` that is not valid UTF-8, so
"applying 1g.18gb×2 …" would vanish from ``systemctl status``. It also connects
once at start; sending each datagram to the address keeps working across
``systemctl daemon-reexec``.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections import deque
from collections.abc import Mapping

from migd.daemon.view import DaemonObserver, DaemonView

log = logging.getLogger("migd.daemon.notify")


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
    """Sends sd_notify datagrams to ``NOTIFY_SOCKET``; does nothing when it is unset.

    A send never blocks. systemd reads its notify socket from its own main loop, and a
    datagram socket takes only a few messages (``net.unix.max_dgram_qlen``, 10 by
    default) before a blocking ``sendto`` waits for the reader: a busy or stalled
    systemd would then stop migd's loop, and with it reloads, stops and GPU repairs.
    So the socket is non-blocking, and what does not fit is held here: READY=1,
    RELOADING=1, STOPPING=1 and the rest are delivered in order once systemd reads
    again. Only the latest STATUS=, WATCHDOG=1 and EXTEND_TIMEOUT_USEC= is worth
    delivering late, so a newer one replaces an older one still held (older STATUS=
    lines are dropped, and that is logged). The daemon's loop calls :meth:`flush`
    every ``RETRY_SECONDS`` while :attr:`holding` says something waits.
    """

    # How often the loop retries what systemd has not taken yet, in seconds.
    RETRY_SECONDS = 0.2
    # A reader stalled this long is logged, at most once every WARN_SECONDS.
    WARN_AFTER = 5.0
    WARN_SECONDS = 60.0
    # Datagrams held at most: reloads while systemd never reads would grow the list
    # without end; past this many the oldest goes (and that is logged).
    MAX_HELD = 64
    # Datagrams of which only the newest matters: a later one replaces one held.
    LATEST_ONLY = ("STATUS", "WATCHDOG", "EXTEND_TIMEOUT_USEC")

    def __init__(self, address: str | None) -> None:
        # An address starting with '@' is in the abstract namespace.
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self._socket: socket.socket | None = None
        self._warned = False  # an undeliverable address is said once
        self._held: deque[tuple[str, ...]] = deque()
        self._stalled_since: float | None = None  # since when the socket has been full
        self._stall_said = False  # this stall has been logged
        self._warned_at: float | None = None  # when a stall was last logged
        self._dropped = 0  # STATUS= lines replaced before systemd read them, this stall

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def holding(self) -> bool:
        """Whether datagrams wait for systemd to read: the loop must :meth:`flush` soon."""
        return bool(self._held)

    def send(self, *assignments: str) -> None:
        """Send ``VAR=value`` assignments together, in one datagram, without blocking.

        systemd reads one datagram as one message: ``RELOADING=1`` must arrive with
        its ``MONOTONIC_USEC=``. When the socket is full the datagram is held and sent
        by a later :meth:`flush`, after those held before it. A failure to send other
        than a full socket is logged once and otherwise ignored: losing systemd must
        not stop the daemon from keeping the GPUs right.
        """
        if self._address is None:
            return
        datagram = tuple(assignments)
        kind = _kind(datagram)
        if kind in self.LATEST_ONLY:
            replaced = [held for held in self._held if _kind(held) == kind]
            for held in replaced:
                self._held.remove(held)
            if kind == "STATUS":
                self._dropped += len(replaced)
        if len(self._held) >= self.MAX_HELD:
            lost = self._held.popleft()
            log.error("systemd has not read %d notifications: dropping %s", self.MAX_HELD, lost[0])
        self._held.append(datagram)
        self.flush()

    def flush(self) -> None:
        """Send the held datagrams, oldest first, until the socket is full again."""
        while self._held:
            if not self._deliver(self._held[0]):
                self._note_stall()
                return
            self._held.popleft()
        if self._stall_said:
            assert self._stalled_since is not None
            log.info(
                "systemd reads notifications again after %.1f s; %d STATUS= line(s) dropped",
                time.monotonic() - self._stalled_since,
                self._dropped,
            )
        self._stalled_since = None
        self._stall_said = False
        self._dropped = 0

    def _deliver(self, datagram: tuple[str, ...]) -> bool:
        """Send one datagram; False when the socket is full (try again later)."""
        assert self._address is not None
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        try:
            self._socket.sendto("\n".join(datagram).encode(), self._address)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                return False
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self._address, exc)
                self._warned = True
        return True

    def _note_stall(self) -> None:
        """Log a reader that stays stalled: after ``WARN_AFTER`` s, then at most every
        ``WARN_SECONDS`` (a systemd busy for a moment is no news)."""
        now = time.monotonic()
        if self._stalled_since is None:
            self._stalled_since = now
            return
        if now - self._stalled_since < self.WARN_AFTER:
            return
        if self._warned_at is not None and now - self._warned_at < self.WARN_SECONDS:
            return
        self._warned_at = now
        self._stall_said = True
        log.warning(
            "systemd has not read notifications for %.0f s (its socket is full): holding "
            "%d (%s) until it does; %d STATUS= line(s) dropped meanwhile",
            now - self._stalled_since,
            len(self._held),
            ", ".join(dict.fromkeys(_kind(held) for held in self._held)),
            self._dropped,
        )

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
        """Close the socket; what systemd has still not read is given up (and said)."""
        if self._held:
            log.warning(
                "exiting with %d notification(s) systemd has not read: %s",
                len(self._held),
                ", ".join(held[0] for held in self._held),
            )
            self._held.clear()
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _kind(datagram: tuple[str, ...]) -> str:
    """The variable a datagram is about: the name of its first assignment."""
    return datagram[0].partition("=")[0] if datagram else ""


class SystemdStatus(DaemonObserver):
    """The observer that shows the daemon's status line in ``systemctl status``."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._shown: str | None = None

    def published(self, view: DaemonView) -> None:
        if view.status_line != self._shown:
            self._notifier.status(view.status_line)
            self._shown = view.status_line
