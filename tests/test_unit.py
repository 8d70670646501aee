"""migd's systemd unit: written once (systemd/migd.service), valid for systemd, and
rendered by ``migd install-unit`` for the migd that runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_support import migd
from paths import REPO

from migd.node.unit import UnitOptions, quote, render_unit, shipped_unit


def test_the_unit_is_written_once() -> None:
    shipped = REPO / "systemd" / "migd.service"
    packaged = REPO / "migd" / "node" / "migd.service"
    # The package carries systemd/migd.service itself (a link, copied into a wheel).
    assert packaged.is_symlink() and packaged.resolve() == shipped.resolve()
    assert shipped_unit() == shipped.read_text()
    assert render_unit(UnitOptions()) == shipped.read_text()


def test_rendering_changes_only_where_migd_is_and_what_it_runs_against() -> None:
    options = UnitOptions(
        ("/opt/my migd/bin/migd",),
        ("-f", "/etc/migd/x.yaml"),
        {"MIGD_SIMULATE": "/srv/node.json"},
        ("/srv",),
    )
    rendered = render_unit(options, home_paths=["/root/venv/bin/migd"]).splitlines()
    shipped = shipped_unit().splitlines()
    added = [line for line in rendered if line not in shipped]
    removed = [line for line in shipped if line not in rendered]
    assert added == [
        'ExecStart="/opt/my migd/bin/migd" run -f /etc/migd/x.yaml',
        'ExecReload="/opt/my migd/bin/migd" reload',
        "Environment=MIGD_SIMULATE=/srv/node.json",
        "ProtectHome=read-only",
        "ReadWritePaths=/srv",
    ]
    assert removed == [
        "ExecStart=/usr/bin/migd run",
        "ExecReload=/usr/bin/migd reload",
        "ProtectHome=yes",
    ]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_shipped_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # ExecStart= must exist for verify: point it at a stub executable.
    stub = tmp_path / "bin" / "migd"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    shipped = (REPO / "systemd" / "migd.service").read_text()
    unit = tmp_path / "migd.service"
    unit.write_text(shipped.replace("/usr/bin/migd", str(stub)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    # Units it merely mentions (kubelet.service, …) need not exist on this machine.
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and "migd.service" in line
    ]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_quote_round_trips_through_systemd_rules() -> None:
    assert quote("/usr/bin/migd") == "/usr/bin/migd"
    assert quote("/srv/my node/state.json") == '"/srv/my node/state.json"'
    assert quote("50%") == "50%%"
    assert quote("$HOME") == "$$HOME"


def test_install_unit_names_this_migd_and_the_simulated_node(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "migd"
    state = tmp_path / "node.json"
    proc = subprocess.run(
        [str(exe), "--simulate", str(state), "install-unit", "--dry-run", "-f", "/etc/x.yaml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    unit = proc.stdout
    assert f"ExecStart={exe} run -f /etc/x.yaml\n" in unit
    assert f"ExecReload={exe} reload\n" in unit
    assert f"Environment=MIGD_SIMULATE={state}\n" in unit
    assert f"ReadWritePaths={tmp_path}\n" in unit
    home = any(os.path.realpath(p).startswith(("/root/", "/home/")) for p in (exe, sys.executable))
    assert ("ProtectHome=read-only\n" in unit) == home

    written = migd("install-unit", "--unit-dir", str(tmp_path / "units"))
    assert written.returncode == 0, written.stderr
    assert (tmp_path / "units" / "migd.service").read_text().startswith("# migd keeps")
