"""The daemon's runtime directory (``/run/migd``): pid file, state file, reload answers.

What lives there, and who writes it:

``migd.pid``
    The daemon's pid, written by ``migd run`` and locked (flock) for its whole life,
    so a second daemon on the same directory refuses to start instead of fighting the
    first one over the GPUs.
``state.json``
    The daemon's published view (``DaemonView``) as JSON, replaced atomically after
    every change; ``migd status`` reads it.
``reload/<token>`` and ``reload/<token>.json``
    The reload handshake. ``migd reload`` creates ``<token>``, sends SIGHUP and waits
    for ``<token>.json``. The daemon answers every token it found when it took the
    reload up, once the outcome of that reload is known. A token is thus answered
    only by a reload that read the config file after the request was made: a
    generation counter cannot promise that while an earlier apply is still running.

The node lock and the daemon's presence marker (``node.lock``, ``node.daemon``) live in
``/run/migd`` too, but belong to the node rather than to this directory: they stay
there whatever ``--runtime-dir`` says (``migd.node.lock``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from migd.core.names import describe, describe_current
from migd.daemon.view import DaemonObserver, DaemonView
from migd.errors import MigdError
from migd.formats.files import atomic_write

STATE_FORMAT = 1

PID_FILE = "migd.pid"
STATE_FILE = "state.json"
RELOAD_DIR = "reload"
_ANSWER_SUFFIX = ".json"


class NotRunning(MigdError):
    """No daemon runs on this runtime directory."""


class AlreadyRunning(MigdError):
    """Another daemon holds this runtime directory."""


@dataclass(frozen=True)
class ReloadAnswer:
    """The outcome of one reload, as ``migd reload`` reports it.

    ``exit_code`` follows the README's table (0 applied or already in force, 2 config
    invalid or not applicable to this node, 1/3/4 apply failed, blocked, reboot needed).
    ``message`` is the error text (every problem, one per line) or the status line.
    """

    exit_code: int
    message: str
    selected_config: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class PidLock:
    """The daemon's hold on its runtime directory; released by :meth:`release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self._path = path
        self._fd = fd

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._path)
        os.close(self._fd)
        self._fd = -1


@dataclass(frozen=True)
class RuntimeDir:
    path: Path

    @property
    def pid_file(self) -> Path:
        return self.path / PID_FILE

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def reload_dir(self) -> Path:
        return self.path / RELOAD_DIR

    # -- the daemon's side -------------------------------------------------------------

    def claim(self, pid: int) -> PidLock:
        """Create the directory, lock the pid file and write ``pid`` into it.

        Raises AlreadyRunning when a live daemon holds the lock.
        """
        self.path.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.reload_dir.mkdir(mode=0o755, exist_ok=True)
        fd = os.open(self.pid_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise AlreadyRunning(
                    f"another migd daemon (pid {self._pid_text()}) runs on {self.path}"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{pid}\n".encode())
        return PidLock(self.pid_file, fd)

    def write_state(self, view: DaemonView) -> None:
        data = json.dumps(state_document(view), indent=2, ensure_ascii=False) + "\n"
        atomic_write(self.state_file, data.encode())

    def reload_requests(self) -> tuple[str, ...]:
        """Tokens of the reload requests waiting for an answer."""
        try:
            names = os.listdir(self.reload_dir)
        except FileNotFoundError:
            return ()
        return tuple(sorted(n for n in names if _is_token(n)))

    def answer(self, tokens: tuple[str, ...], answer: ReloadAnswer) -> None:
        data = json.dumps(asdict(answer), ensure_ascii=False).encode()
        for token in tokens:
            with contextlib.suppress(FileNotFoundError):
                atomic_write(self.reload_dir / (token + _ANSWER_SUFFIX), data)
                os.unlink(self.reload_dir / token)

    # -- the clients' side ---------------------------------------------------------------

    def read_pid(self) -> int:
        """The pid of the daemon running on this directory; NotRunning if there is none."""
        text = self._pid_text()
        if not text.isdigit():
            raise NotRunning(f"no migd daemon runs on {self.path} (no pid file)")
        pid = int(text)
        if not pid_alive(pid):
            raise NotRunning(f"no migd daemon runs on {self.path} (pid {pid} is gone)")
        return pid

    def read_state(self) -> dict[str, Any]:
        try:
            with open(self.state_file, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            raise NotRunning(f"no migd state in {self.path} (is the daemon running?)") from None

    def request_reload(self) -> str:
        import secrets  # only `migd reload` asks: the daemon need not load it

        token = f"{os.getpid()}-{secrets.token_hex(6)}"
        fd = os.open(
            self.reload_dir / token, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        os.close(fd)
        return token

    def read_answer(self, token: str) -> ReloadAnswer | None:
        try:
            with open(self.reload_dir / (token + _ANSWER_SUFFIX), encoding="utf-8") as f:
                return ReloadAnswer(**json.load(f))
        except FileNotFoundError:
            return None

    def forget(self, token: str) -> None:
        """Remove a request and its answer (the client is done with them, or gave up)."""
        for name in (token, token + _ANSWER_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.reload_dir / name)

    def _pid_text(self) -> str:
        try:
            return self.pid_file.read_text().strip()
        except OSError:
            return ""


def _is_token(name: str) -> bool:
    pid, _, rest = name.partition("-")
    return pid.isdigit() and rest.isalnum()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def state_document(view: DaemonView) -> dict[str, Any]:
    """The JSON form of a view, as ``migd status --json`` prints it.

    Per GPU it adds the desired and current layouts in one line each, derived from
    the view's snapshot and desired layouts (the view itself holds no text for them).
    """
    desired = {d.index: d for d in view.desired}
    gpus_now = {g.index: g for g in view.snapshot.gpus} if view.snapshot is not None else {}
    gpus = []
    for gpu in view.gpus:
        entry: dict[str, Any] = {
            "index": gpu.index,
            "in_sync": gpu.in_sync,
            "outcome": gpu.outcome,
            "reason": gpu.reason,
            "reboot_required": gpu.reboot_required,
            "contested": gpu.contested,
        }
        state = gpus_now.get(gpu.index)
        if state is not None:
            entry["name"] = state.name
            entry["current"] = describe_current(state)
            if gpu.index in desired:
                entry["desired"] = describe(state, desired[gpu.index])
        gpus.append(entry)
    return {
        "format": STATE_FORMAT,
        "pid": view.pid,
        "phase": view.phase.value,
        "status": view.status_line,
        "config_file": view.config_file,
        "selected_config": view.selected_config,
        "config_digest": view.config_digest,
        "reload_generation": view.reload_generation,
        "last_reload_ok": view.last_reload_ok,
        "last_reload_error": view.last_reload_error,
        "last_reload_success_time": view.last_reload_success_time,
        "last_reconcile_time": view.last_reconcile_time,
        "last_success_time": view.last_success_time,
        "last_error": view.last_error,
        "gpus": gpus,
        **({"extra": dict(view.extra)} if view.extra else {}),
    }


class StateFile(DaemonObserver):
    """The observer that keeps ``state.json`` equal to the latest published view."""

    def __init__(self, runtime: RuntimeDir) -> None:
        self._runtime = runtime

    def published(self, view: DaemonView) -> None:
        self._runtime.write_state(view)
