"""One owner per node: the node lock and the daemon's presence marker.

Every path that changes MIG geometry (the daemon's reconciles, ``migd apply``,
``migd restore``, and the same verbs under the ``nvidia-mig-parted`` name) takes one
node-wide lock first, so two writers never interleave their NVML calls. Two files,
side by side:

``node.lock``
    ``flock``-ed exclusively for the length of one change. Its holder writes its pid
    and what it is doing into it, so a process that has to wait can say for whom.
``node.daemon``
    ``flock``-ed by ``migd run`` for its whole life, holding its pid and config file:
    a one-shot verb that finds it locked knows a daemon owns the node and refuses,
    naming it, before it touches anything.

They live in ``/run/migd`` (the daemon's default runtime directory), whatever
``--runtime-dir`` a daemon was given: the lock belongs to the node, not to one daemon.
``$MIGD_NODE_LOCK`` moves the lock (the marker follows it, ``.daemon`` for ``.lock``).
A simulated node keeps them beside its state file (``STATE.node.lock``), so the
daemon and the verbs on one simulated node meet there without root.

Reads never take the lock: ``plan``, ``assert``, ``export``, ``checkpoint`` and
``status`` never wait for a change to end.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from migd.errors import MigdError, NodeBusy
from migd.node import DEFAULT_NODE_LOCK, NODE_LOCK_ENV

# How often a waiter tries the lock again; flock has no timeout of its own.
POLL_SECONDS = 0.05


def node_lock_path(environ: Mapping[str, str], simulate: str | None) -> Path:
    """Where this node's lock lives: ``$MIGD_NODE_LOCK``, beside a simulated node, or /run/migd."""
    override = environ.get(NODE_LOCK_ENV)
    if override:
        return Path(override)
    if simulate:
        return Path(os.path.abspath(simulate) + ".node.lock")
    return Path(DEFAULT_NODE_LOCK)


@dataclass(frozen=True)
class DaemonPresent:
    """The daemon that owns the node, as its marker says."""

    pid: int
    config_file: str = ""


class _Held:
    """An open, flock-ed file; closing it releases the lock."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _open(path: Path) -> int:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


@contextlib.contextmanager
def _marked(fd: int, what: str) -> Iterator[None]:
    """Who holds the lock, written into it for the block (waiters name the holder)."""
    _write(fd, f"{os.getpid()} {what}\n")
    try:
        yield
    finally:
        _write(fd, "")


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class NodeLock:
    """The node lock at ``path`` and the daemon marker beside it."""

    path: Path

    @property
    def daemon_path(self) -> Path:
        return self.path.with_suffix(".daemon")

    # -- the daemon's presence ------------------------------------------------------------

    def claim_daemon(self, pid: int, config_file: str) -> _Held:
        """Mark the node as owned by the daemon ``pid`` until the result is released.

        Raises NodeBusy when another daemon (on another runtime directory) owns it.
        """
        try:
            fd = _open(self.daemon_path)
        except OSError as exc:
            raise MigdError(f"cannot create {self.daemon_path}: {exc.strerror}") from None
        if not _try_lock(fd, fcntl.LOCK_EX):
            os.close(fd)
            other = self.daemon()
            who = f"pid {other.pid}" if other else "another process"
            raise NodeBusy(f"another migd daemon ({who}) owns this node ({self.daemon_path})")
        _write(fd, f"{pid}\n{config_file}\n")
        return _Held(fd)

    def daemon(self) -> DaemonPresent | None:
        """The daemon that owns the node, or None. Never waits."""
        try:
            fd = os.open(self.daemon_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None  # no daemon ever ran here, or not readable: none to name
        try:
            if _try_lock(fd, fcntl.LOCK_SH):
                return None  # a marker left by a daemon that is gone
            pid, _, rest = _read(self.daemon_path).partition("\n")
            return DaemonPresent(int(pid) if pid.isdigit() else 0, rest.strip())
        finally:
            os.close(fd)

    # -- one change at a time ---------------------------------------------------------------

    def holder(self) -> str:
        """``pid 4242 (migd apply)``: who holds the lock, as the holder wrote it."""
        text = _read(self.path).strip()
        pid, _, what = text.partition(" ")
        if not pid.isdigit():
            return "another process"
        return f"pid {pid} ({what})" if what else f"pid {pid}"

    @contextlib.contextmanager
    def hold(
        self,
        what: str,
        *,
        timeout: float | None,
        on_wait: Callable[[str], None] | None = None,
    ) -> Iterator[None]:
        """Hold the lock while the block runs, waiting up to ``timeout`` s (None: no bound).

        ``on_wait`` hears, once, whom it waits for. Raises NodeBusy after ``timeout``.
        """
        with self._opened() as fd:
            if not _try_lock(fd, fcntl.LOCK_EX):
                holder = self.holder()
                if on_wait is not None:
                    on_wait(f"waiting for the node lock {self.path}, held by {holder}")
                deadline = None if timeout is None else time.monotonic() + timeout
                while not _try_lock(fd, fcntl.LOCK_EX):
                    if deadline is not None and time.monotonic() >= deadline:
                        raise NodeBusy(
                            f"another change is running on this node: {self.path} has been "
                            f"held by {self.holder()} for more than {timeout:g} s; nothing "
                            "was touched. Run again once it has finished"
                        )
                    time.sleep(POLL_SECONDS)
            with _marked(fd, what):
                yield

    @contextlib.contextmanager
    def attempt(self, what: str) -> Iterator[str | None]:
        """Hold the lock if it is free; yields None when held, else who holds it."""
        with self._opened() as fd:
            if not _try_lock(fd, fcntl.LOCK_EX):
                yield self.holder()
                return
            with _marked(fd, what):
                yield None

    @contextlib.contextmanager
    def _opened(self) -> Iterator[int]:
        """The lock file's descriptor; closing it is what lets the lock go."""
        try:
            fd = _open(self.path)
        except OSError as exc:
            raise MigdError(f"cannot take the node lock {self.path}: {exc.strerror}") from None
        try:
            yield fd
        finally:
            os.close(fd)


# What a one-shot verb sends the daemon after changing the node under it: look now.
CHECK_SIGNAL = signal.SIGUSR1


def refusal(owner: DaemonPresent, verb: str) -> str:
    """Why a one-shot verb leaves a node the daemon owns alone, and what to do instead."""
    config = owner.config_file or "its config file"
    return (
        f"migd daemon (pid {owner.pid}) owns this node's MIG layout; '{verb}' changed "
        f"nothing, so that two writers do not fight over the GPUs. To change the layout, "
        f"edit {config} and run 'systemctl reload migd' (or 'migd reload'). "
        "--override-daemon (or --force) changes the GPUs anyway; the daemon then checks "
        "them at once (under drift-check policy repair it puts its own layout back)"
    )


@contextlib.contextmanager
def one_shot_change(
    lock: NodeLock,
    verb: str,
    *,
    override_daemon: bool,
    timeout: float,
    say: Callable[[str], None],
) -> Iterator[None]:
    """The block runs as the node's one writer, or raises NodeBusy before it runs.

    With a daemon present: refused unless ``override_daemon``; then the block waits for
    the daemon's change in flight (the lock), and the daemon is told to look at the
    node again as soon as the block is done, rather than at its next drift check.
    Without one: another one-shot change in flight is waited for, ``timeout`` s at most.
    """
    owner = lock.daemon()
    if owner is not None and not override_daemon:
        raise NodeBusy(refusal(owner, verb))
    try:
        with lock.hold(verb, timeout=timeout, on_wait=say):
            yield
    finally:
        if owner is not None:
            now = lock.daemon()  # it may have been restarted meanwhile
            if now is not None and now.pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(now.pid, CHECK_SIGNAL)
                    say(f"told migd daemon (pid {now.pid}) to check the GPUs now")
