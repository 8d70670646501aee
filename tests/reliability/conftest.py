"""The reliability tests: crash points, the fault matrix, bad input, the metrics endpoint
of a running daemon, and the soak.

They share ``reliability_support`` (beside this file) and the daemon tests' support
module (``tests/daemon_support.py``). Each test records one summary line with its
figures; they are printed at the end of the run, under "migd reliability".
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent, HERE.parent / "systemd"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import reliability_support  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "soak_long: the long soak (500 reloads on 8 GPUs); also marked soak, so only "
        "run when selected: pytest -m soak_long tests/reliability",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if reliability_support.SUMMARIES:
        terminalreporter.section("migd reliability")
        for line in reliability_support.SUMMARIES:
            terminalreporter.write_line(line)
