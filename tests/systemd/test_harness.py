"""The systemd harness itself: what it must do so that a test runs the same wherever
the checkout sits (no systemd is booted here)."""

from __future__ import annotations

from pathlib import Path

from systemd_harness import Systemd, below_private_tmp

UNIT = "[Service]\nExecStart=/bin/true\nPrivateTmp=yes\n"


def test_paths_a_private_tmp_would_hide_are_the_outermost_below_tmp() -> None:
    paths = ["/tmp/solo/main", "/tmp/solo/main/.venv", "/root/.pyenv", "/var/tmp/x", "/tmpfoo"]
    assert below_private_tmp(paths) == ["/tmp/solo/main", "/var/tmp/x"]
    assert below_private_tmp(["/work/main", "/usr"]) == []


def test_a_service_with_a_private_tmp_gets_the_checkout_bound_in(tmp_path: Path) -> None:
    """tmp_path lies below /tmp, as a checkout there would."""
    units = {"a.service": UNIT, "b.service": "[Service]\nExecStart=/bin/true\n"}
    Systemd(tmp_path / "m", units, keep=["/tmp/solo/main", "/usr/lib"])
    drop_in = tmp_path / "m" / "units" / "a.service.d" / "zz-checkout.conf"
    bound = sorted(["/tmp/solo/main", str(tmp_path / "m")])
    assert drop_in.read_text() == f"[Service]\nBindPaths={' '.join(bound)}\n"
    assert not (tmp_path / "m" / "units" / "b.service.d").exists()
