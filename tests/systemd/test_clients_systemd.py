"""GPU client units under a real systemd 252: what ``migd apply`` stops and starts again.

One systemd is booted for the module (``systemd_harness``) with three stand-in client
units (``sleep infinity``): client-a and client-c are started once systemd runs,
client-b is not. Each writes ``start <name>`` to a log as its main process starts and
``stop <name>`` as systemd stops it (``ExecStop=``, while it still runs), so the log
is the sequence systemd really ran. (Unit timestamps would not do: systemd unloads an
inactive unit and forgets them; ``ExecStopPost=`` races with the cgroup's removal.)
``migd --simulate STATE apply`` runs inside the namespace, where its ``systemctl``
talks to that systemd, with ``settings.gpu-clients.units`` naming all three.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_support import SMALL, all_hold, sim, wait_for
from systemd_harness import (
    TARGET,
    Systemd,
    logged_events,
    python_paths,
    requires_systemd,
    scratch_directory,
    standin_units,
)

pytestmark = requires_systemd()

CLIENTS = ("client-a.service", "client-b.service", "client-c.service")

TARGET_UNIT = """\
[Unit]
Description=migd clients test
Wants=systemd-journald.socket systemd-journald-dev-log.socket
"""

CONFIG = """\
version: v1
settings:
  metrics: {{address: null}}
  command-timeout: 30s
  gpu-clients:
    units: [{units}]
mig-configs:
  empty:
    - devices: all
      mig-enabled: true
      mig-devices: {{}}
  small:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.18gb": 7
  balanced:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.18gb": 2
        "2g.35gb": 1
        "3g.71gb": 1
"""


@dataclass
class Node:
    directory: Path
    systemd: Systemd

    @property
    def state(self) -> Path:
        return self.directory / "node.json"

    @property
    def log(self) -> Path:
        return self.directory / "clients.log"

    def events(self, since: int = 0) -> list[str]:
        return logged_events(self.log, since)

    def fresh(self) -> None:
        """A freshly booted simulated node (MIG off)."""
        sim("init", str(self.state), "--gpu", "H200x2")

    def apply(self, name: str) -> subprocess.CompletedProcess[str]:
        return self.systemd.run(
            sys.executable, "-m", "migd", "--simulate", str(self.state),
            "apply", "-f", str(self.directory / "config.yaml"), "-c", name,
        )  # fmt: skip

    def active(self) -> dict[str, str]:
        return {u: self.systemd.show(u, "ActiveState")["ActiveState"] for u in CLIENTS}


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    directory = scratch_directory("clients-test")
    (directory / "config.yaml").write_text(CONFIG.format(units=", ".join(CLIENTS)))
    log = directory / "clients.log"
    units = standin_units(CLIENTS, log)
    systemd = Systemd(directory, {**units, TARGET: TARGET_UNIT}, keep=python_paths())
    booted = Node(directory, systemd)
    try:
        systemd.boot()
        started = systemd.systemctl("start", "client-a.service", "client-c.service")
        assert started.returncode == 0, started.stderr
        wait_for(lambda: len(booted.events()) == 2, "client-a and client-c started")
        yield booted
    finally:
        systemd.close()


def events_after(node: Node, since: int, count: int) -> list[str]:
    """The log from line ``since`` once it has ``count`` more (starts are only queued)."""
    return wait_for(
        lambda: found if len(found := node.events(since)) >= count else None,
        f"{count} client events",
        timeout=15,
    )


CYCLE = ["stop client-c", "stop client-a", "start client-a", "start client-c"]


def test_a_mode_change_stops_the_running_clients_and_starts_exactly_them(node: Node) -> None:
    node.fresh()
    mark = len(node.events())
    applied = node.apply("small")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert events_after(node, mark, 4) == CYCLE  # client-b, not running, is left alone
    assert "stopped GPU client units: client-c.service, client-a.service" in applied.stdout
    assert all_hold(node.state, SMALL)
    assert node.active() == {
        "client-a.service": "active",
        "client-b.service": "inactive",
        "client-c.service": "active",
    }


def test_a_change_that_only_creates_instances_stops_nothing(node: Node) -> None:
    node.fresh()
    mark = len(node.events())
    setup = node.apply("empty")  # MIG on, no instances: a mode change
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert events_after(node, mark, 4) == CYCLE
    mark = len(node.events())
    applied = node.apply("small")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert all_hold(node.state, SMALL)
    assert node.events(mark) == []
    assert "GPU client units" not in applied.stdout


def test_a_failing_apply_still_starts_the_clients_again(node: Node) -> None:
    node.fresh()
    mark = len(node.events())
    setup = node.apply("small")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    events_after(node, mark, 4)
    # Going to balanced destroys instances (clients stopped); its first create fails.
    sim(
        "fault", str(node.state),
        "--call", "nvmlDeviceCreateGpuInstanceWithPlacement", "--code", "UNKNOWN", "--count", "1",
    )  # fmt: skip
    mark = len(node.events())
    applied = node.apply("balanced")
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert "FAILED" in applied.stdout
    assert events_after(node, mark, 4) == CYCLE
    assert node.active()["client-a.service"] == node.active()["client-c.service"] == "active"
