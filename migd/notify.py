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

import contextlib
import errno
import logging
import os
import socket
import threading
import time
from collections import deque
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


# What NotifyReceiver.pause() fills its own queue with; dropped when read.
_FILLER = b"X_MIGD_TEST_FILLER=1"


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
        self._bound = "\0" + name
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self._bound)
        # The reading thread looks at _closed this often: how long close() may take.
        self._sock.settimeout(0.1)
        self._messages: list[NotifyMessage] = []
        self._cond = threading.Condition()
        self._closed = False
        self._paused = False  # pause() asked the thread to stop reading
        self._parked = False  # the thread has stopped reading
        self._thread = threading.Thread(target=self._read, name="notify-receiver", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            with self._cond:
                if self._paused:  # the datagrams stay queued in the socket
                    self._parked = True
                    self._cond.notify_all()
                    self._cond.wait(0.1)
                    continue
                self._parked = False
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
            if data == _FILLER:
                continue
            lines = data.decode(errors="replace").split("\n")
            fields = dict(line.split("=", 1) for line in lines if "=" in line)
            with self._cond:
                self._messages.append(NotifyMessage(at, fields))
                self._cond.notify_all()

    def pause(self) -> None:
        """Stop reading, as a busy systemd does: the socket fills and senders find it full.

        Returns once the reading thread has stopped: nothing arrives after that until
        :meth:`resume`.
        """
        with self._cond:
            self._paused = True
            if not self._cond.wait_for(lambda: self._parked or self._closed, timeout=10):
                raise TimeoutError("the notify receiver did not stop reading within 10 s")
        self._fill()

    def _fill(self) -> None:
        """Fill the socket's queue with datagrams the reader drops, so that the next
        sender finds it full however deep the queue is (``net.unix.max_dgram_qlen``: 10
        by default, 512 once a systemd has booted in this network namespace)."""
        fillers: list[socket.socket] = []
        try:
            # A sender's own buffer also limits what it may have queued: one socket
            # after the other until one can send nothing at all.
            for _ in range(100):
                filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                filler.setblocking(False)
                fillers.append(filler)
                sent = 0
                with contextlib.suppress(BlockingIOError):
                    for _ in range(100_000):
                        filler.sendto(_FILLER, self._bound)
                        sent += 1
                if sent == 0:
                    return
            raise RuntimeError("the notify receiver's queue did not fill")
        finally:
            for filler in fillers:
                filler.close()

    def resume(self) -> None:
        """Read again: what queued in the socket meanwhile arrives, in order."""
        with self._cond:
            self._paused = self._parked = False
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
