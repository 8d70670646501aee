"""What a skipped test means when CI runs the suite (``CI=true``).

.ci/run installs everything the tests use (systemd, prometheus and promtool, openssl)
and runs as root, so under CI a skip means that a test which should have run did not:
a real-systemd test without systemd, an alert test without promtool, a TLS test without
openssl. The conftest hooks report such a skip as a failure that names it.

Only a skip raised through :func:`skip_allowed_in_ci` stays a skip under CI. It is for
what neither the project nor an install step can provide:

- mig-parted's own files, when the reference folder is not beside the checkout
  (``paths.anchor``): the tests that only check those files cannot run without them;
- IPv6 on loopback, when the machine's kernel has none;
- TLS 1.1 offered by a client, when this Python's OpenSSL cannot offer it at all (no
  client here can then try what the test refuses);
- a machine that has its own /etc/migd/config.yaml, which a test may not touch;
- mig-parted's own ``service.sh`` (third-party code the project does not carry), unless
  ``MIGD_TEST_MIG_PARTED_SERVICE_SH`` names a copy, or a machine where nvidia-mig-manager
  is installed, whose directories that script writes to
  (tests/test_mig_parted_dropin.py replays its sequence on every run).

A whole module skipped at collection is never allowed under CI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NoReturn

import pytest

TRUE_VALUES = ("1", "true", "yes")


class AllowedInCi(pytest.skip.Exception):
    """A skip that stays a skip under CI (see the module docstring for when)."""

    __module__ = "builtins"  # as pytest's own Skipped: reports read "AllowedInCi: reason"


def skip_allowed_in_ci(reason: str) -> NoReturn:
    """Skip the calling test; under CI too (only for the cases the module docstring lists)."""
    raise AllowedInCi(reason, _use_item_location=True)


def under_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the CI variable is set to a true value, as CI services and .ci/run set it."""
    return environ.get("CI", "").strip().lower() in TRUE_VALUES


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skipped report gives (pytest keeps it as (path, line, "Skipped: …"))."""
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def fail_forbidden_skip(
    report: pytest.TestReport | pytest.CollectReport, allowed: bool, where: str
) -> None:
    """Turn a skipped ``report`` into a failure when under CI and not ``allowed``."""
    if not report.skipped or hasattr(report, "wasxfail") or allowed or not under_ci():
        return
    report.outcome = "failed"
    report.longrepr = (
        f"{where} was skipped under CI=true, which fails the run: {skip_reason(report)}\n"
        "CI must run it: .ci/run installs what the tests need. The skips CI allows are "
        "listed in tests/ci_policy.py."
    )
