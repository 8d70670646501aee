"""Watching the processes a test's commands leave behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


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
