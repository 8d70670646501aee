"""What every folder of tests shares: the support modules beside this file, and what a
skip means under CI (tests/ci_policy.py).

This folder goes on ``sys.path``, so tests in tests/sim and tests/systemd import
``paths``, ``daemon_support`` and the rest by plain name, as the tests here do.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from ci_policy import AllowedInCi, fail_forbidden_skip  # noqa: E402  (needs the path above)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    allowed = call.excinfo is not None and call.excinfo.errisinstance(AllowedInCi)
    fail_forbidden_skip(outcome.get_result(), allowed, f"{item.nodeid} ({call.when})")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    fail_forbidden_skip(outcome.get_result(), False, f"{collector.nodeid} (collection)")
