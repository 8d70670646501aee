"""``migd.command.run_command``, the one way migd runs an external program, with real
programs: no shell, a timeout that kills what the program started, bounded output."""

from __future__ import annotations

import sys
from pathlib import Path

from process_support import end, ended, finishes_within

from migd.command import run_command

SH = "/bin/sh"


def test_arguments_are_never_expanded() -> None:
    result = run_command(["/bin/echo", "$HOME", "*", "a;b", "`id`"], timeout=10, env={})
    assert result.ok
    assert result.stdout == "$HOME * a;b `id`\n"


def test_a_command_past_its_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    result = run_command([SH, "-c", script], timeout=0.5)
    assert result.timed_out and result.returncode is None
    assert result.error == "did not finish within 0.5 s and was killed"
    assert ended(int(pidfile.read_text()))


def test_a_child_left_holding_the_output_does_not_hold_migd(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # Exits at once, leaving a child that keeps stdout and stderr open for 60 s.
    script = f"sleep 60 & echo $! > {pidfile}; echo done"
    try:
        result = finishes_within(
            10, lambda: run_command([SH, "-c", script], timeout=30), "run_command"
        )
        assert result.ok and result.stdout == "done\n"
    finally:
        end(int(pidfile.read_text()))


def test_output_is_bounded_to_its_tail() -> None:
    code = "import sys; sys.stdout.write('x' * 100000 + 'END')"
    result = run_command([sys.executable, "-c", code], timeout=30)
    assert result.ok
    assert len(result.stdout) == 16 * 1024 and result.stdout.endswith("END")
