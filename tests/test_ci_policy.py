"""Under CI=true a skipped test fails the run, unless tests/ci_policy.py allows that skip.

Each test runs pytest on a tiny test file with this folder's conftest.py (the hooks
the suite itself runs with) and reads what pytest reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

TINY = """\
import pytest
from ci_policy import skip_allowed_in_ci


@pytest.mark.skipif(True, reason="promtool is not installed")
def test_marked_skip():
    pass


def test_skip_in_the_body():
    pytest.skip("the openssl command is not installed")


def test_allowed_skip():
    skip_allowed_in_ci("mig-parted's own config.yaml is not here")


@pytest.mark.xfail(reason="a known defect", strict=True)
def test_expected_failure():
    assert False


def test_that_runs():
    pass
"""

MODULE_SKIP = """\
import pytest

pytest.skip("no prometheus here", allow_module_level=True)


def test_never_collected():
    pass
"""


def run_pytest(tmp_path: Path, source: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    """pytest -rA on ``source`` with the suite's conftest, CI set to ``ci`` (None: unset)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_tiny.py").write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rA"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def summary(result: subprocess.CompletedProcess[str]) -> str:
    """pytest's closing counts: "1 passed, 3 skipped" from "=== 1 passed, 3 skipped in 0.1s ==="."""
    return result.stdout.splitlines()[-1].strip("= ").rsplit(" in ", 1)[0]


def outcome_lines(result: subprocess.CompletedProcess[str]) -> set[str]:
    """The -rA summary lines, as "OUTCOME test_name"."""
    found = set()
    for line in result.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL"):
            name = rest.split("::")[-1].split(" ")[0] if "::" in rest else rest.split(" ")[0]
            found.add(f"{word} {name}")
    return found


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_outside_ci_a_skip_stays_a_skip(tmp_path: Path, ci: str | None) -> None:
    result = run_pytest(tmp_path, TINY, ci)
    assert result.returncode == 0, result.stdout
    assert summary(result) == "1 passed, 3 skipped, 1 xfailed"


@pytest.mark.parametrize("ci", ["true", "1", "TRUE", "yes"])
def test_under_ci_a_skip_fails_unless_the_policy_allows_it(tmp_path: Path, ci: str) -> None:
    result = run_pytest(tmp_path, TINY, ci)
    assert result.returncode == 1, result.stdout
    lines = outcome_lines(result)
    assert "ERROR test_marked_skip" in lines  # skipped at setup: an error
    assert "FAILED test_skip_in_the_body" in lines
    assert "PASSED test_that_runs" in lines
    assert "XFAIL test_expected_failure" in lines  # an expected failure is not a skip
    assert not any(line.endswith("test_marked_skip") for line in lines - {"ERROR test_marked_skip"})
    assert any(line.startswith("SKIPPED") for line in lines), result.stdout  # the allowed one
    assert "AllowedInCi: mig-parted's own config.yaml is not here" in result.stdout
    # The failure says what was skipped, why, and what to do.
    assert "test_marked_skip (setup) was skipped under CI=true" in result.stdout
    assert "promtool is not installed" in result.stdout
    assert "the openssl command is not installed" in result.stdout
    assert ".ci/run installs what the tests need" in result.stdout
    assert summary(result) == "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error"


def test_under_ci_a_module_skipped_at_collection_fails(tmp_path: Path) -> None:
    outside = run_pytest(tmp_path, MODULE_SKIP, None)
    assert (outside.returncode, summary(outside)) == (5, "1 skipped")  # 5: no test ran
    result = run_pytest(tmp_path, MODULE_SKIP, "true")
    assert result.returncode != 0
    assert "test_tiny.py (collection) was skipped under CI=true" in result.stdout
    assert "no prometheus here" in result.stdout
