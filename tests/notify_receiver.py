"""The receiving end of sd_notify: systemd's side of NOTIFY_SOCKET, without systemd.

The tests and the benchmarks watch a daemon through it (the benchmarks find this
folder on the path ``bench/__init__.py`` gives them), so both read the daemon's
datagrams the same way.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


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
        # A random name: tests and benchmarks running at once never share a socket.
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
