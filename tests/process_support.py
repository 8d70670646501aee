"""Calls that must return, and processes that must end, within a liveness deadline."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def finishes_within(seconds: float, call: Callable[[], T], what: str) -> T:
    """``call()``'s value, or a test failure naming ``what`` when it has not returned
    within ``seconds`` (it is then left running in a daemon thread)."""
    outcome: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="finishes-within", daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert not thread.is_alive(), f"{what} still runs after {seconds:g} s"
    if errors:
        raise errors[0]
    return outcome[0]


def ended(pid: int, timeout: float = 5.0) -> bool:
    """Whether process ``pid`` is gone (or a zombie) within ``timeout`` seconds.

    A killed process may linger a moment as a zombie until its parent (init, for an
    orphan) reaps it: that counts as ended.
    """
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + timeout
    while True:
        try:
            if "State:\tZ" in status.read_text(errors="replace"):
                return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def end(pid: int) -> None:
    """SIGKILL process ``pid`` if it still runs: what a test left running must not outlive it."""
    if not ended(pid, timeout=0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
