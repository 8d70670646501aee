"""The one way migd runs an external program.

Hooks, ``systemctl``, the CDI and MIG-capability commands and the GPU reset command
all run through :func:`run_command`: an argv, never a shell; stdin closed; a timeout,
at which the program's whole process group is killed; its output kept in temporary
files rather than pipes, so a child left running with them open cannot block migd;
only the tail of that output read back.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from migd.errors import shorten

# Output kept per stream of an external command: enough for the last lines of an
# error, bounded whatever the program prints.
MAX_OUTPUT_BYTES = 16 * 1024


@dataclass(frozen=True)
class CommandResult:
    """How one external program ended.

    ``returncode`` is None when it did not start or was killed at its timeout.
    ``error`` is one clause for an operator (``exited with status 3: unit not
    found``), None when the program exited 0. ``stdout``/``stderr`` hold the last
    ``MAX_OUTPUT_BYTES`` of each stream.
    """

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    duration: float = 0.0
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)


def _tail(f: IO[bytes]) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - MAX_OUTPUT_BYTES))
    return f.read().decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group the program leads (it was started in a new session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _failure(returncode: int, stderr: str, stdout: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        text = f"killed by {name}"
    else:
        text = f"exited with status {returncode}"
    lines = (stderr.strip() or stdout.strip()).splitlines()
    return f"{text}: {shorten(lines[-1], 200)}" if lines else text


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> CommandResult:
    """Run ``argv`` (never through a shell) and wait at most ``timeout`` seconds.

    ``env`` None passes migd's own environment; otherwise exactly ``env`` (a bare
    command name is then looked up in ``env["PATH"]``). The program starts in a new
    session so that, at the timeout, its whole process group is killed: a hook's
    shell and what it started do not outlive the hook. Output goes to anonymous
    temporary files rather than pipes, so a grandchild that keeps them open cannot
    block migd, and only their tails are read back. Never raises for a program that
    fails: the result says why.
    """
    import tempfile  # here: a daemon that runs no command does not pay for it

    argv = tuple(argv)
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            what = exc.filename if exc.filename is not None else argv[0]
            if isinstance(exc, FileNotFoundError) and what == argv[0]:
                reason = f"{argv[0]}: command not found"
            elif isinstance(exc, FileNotFoundError) and what == cwd:
                reason = f"workdir {cwd}: no such directory"
            else:
                reason = f"{what}: {exc.strerror or exc}"
            return CommandResult(argv, None, error=reason, duration=time.monotonic() - started)
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            returncode = None
        except BaseException:
            # Interrupted (KeyboardInterrupt, SystemExit): leave no orphan behind.
            _kill_group(proc)
            raise
        stdout, stderr = _tail(out), _tail(err)
    duration = time.monotonic() - started
    if returncode is None:
        return CommandResult(
            argv,
            None,
            stdout,
            stderr,
            error=f"did not finish within {timeout:g} s and was killed",
            duration=duration,
            timed_out=True,
        )
    error = None if returncode == 0 else _failure(returncode, stderr, stdout)
    return CommandResult(argv, returncode, stdout, stderr, error, duration)
