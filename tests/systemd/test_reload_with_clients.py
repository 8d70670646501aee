"""A layout change by `systemctl reload migd` on a node with GPU clients, under systemd 252.

The shipped unit (``migd install-unit``) runs ``migd run`` on a simulated 2×H200 node
whose config names two running stand-in GPU clients and one stopped one, a stand-in
device plugin, a CDI refresh command and an NFD feature file. Editing the layout and
reloading must stop exactly the running clients, start exactly those again, restart
the device plugin, run the refresh, and leave the feature file saying ``success``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_support import BALANCED, SMALL, all_hold, sim, wait_for, write_atomically
from systemd_harness import (
    TARGET,
    Systemd,
    installed_unit,
    logged_events,
    python_paths,
    requires_systemd,
    scratch_directory,
    standin_units,
)

pytestmark = requires_systemd()

CLIENTS = ("dcgm-standin.service", "exporter-standin.service", "idle-standin.service")
PLUGIN = "plugin-standin.service"

# The boot brings up migd, two of the clients and the plugin; the third client stays off.
TARGET_UNIT = """\
[Unit]
Description=migd reload test
Wants=systemd-journald-dev-log.socket migd.service dcgm-standin.service
Wants=exporter-standin.service plugin-standin.service
"""

CONFIG = """\
version: v1
selected-config: {selected}
settings:
  metrics: {{address: null}}
  command-timeout: 30s
  gpu-clients:
    units: [{clients}]
  device-plugin:
    strategy: mixed
    units: [{plugin}]
  cdi-refresh-command: ["/bin/sh", "-c", "echo cdi-refresh >> {log}"]
  nfd:
    path: {nfd}
mig-configs:
  balanced:
    - devices: all
      mig-enabled: true
      mig-devices: {{"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1}}
  small:
    - devices: all
      mig-enabled: true
      mig-devices: {{"1g.18gb": 7}}
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
        return self.directory / "events.log"

    @property
    def nfd(self) -> Path:
        return self.directory / "features.d" / "migd"

    def config(self, selected: str) -> str:
        return CONFIG.format(
            selected=selected,
            clients=", ".join(CLIENTS),
            plugin=PLUGIN,
            log=self.log,
            nfd=self.nfd,
        )

    def events(self, since: int = 0) -> list[str]:
        return logged_events(self.log, since)

    def labels(self) -> dict[str, str]:
        lines = self.nfd.read_text().splitlines() if self.nfd.exists() else []
        return dict(line.split("=", 1) for line in lines if "=" in line and line[0] != "#")


@pytest.fixture
def node() -> Iterator[Node]:
    directory = scratch_directory("reload-clients")
    (directory / "features.d").mkdir()
    booted = Node(directory, None)  # type: ignore[arg-type]
    sim("init", str(booted.state), "--gpu", "H200x2")
    (directory / "config.yaml").write_text(booted.config("balanced"))
    # Like DCGM or the device plugin on a real node, the stand-ins come after migd.
    units = standin_units((*CLIENTS, PLUGIN), booted.log, after_migd=True)
    units["migd.service"] = installed_unit(
        booted.state, directory / "config.yaml", directory / "install"
    )
    units[TARGET] = TARGET_UNIT
    booted.systemd = Systemd(directory, units, keep=python_paths())
    try:
        booted.systemd.boot()
        yield booted
    finally:
        booted.systemd.close()


def test_a_reload_that_changes_the_layout_cycles_exactly_the_running_clients(node: Node) -> None:
    systemctl = node.systemd.systemctl
    wait_for(lambda: len(node.events()) == 3, "two clients and the device plugin running")
    # They started after migd was ready: the GPUs already held the layout, and the
    # boot-time change cycled nothing.
    assert all_hold(node.state, BALANCED)
    assert node.labels()["nvidia.com/mig.config.state"] == "success"
    assert sorted(node.events()) == sorted(
        ["start dcgm-standin", "start exporter-standin", "start plugin-standin"]
    )

    mark = len(node.events())
    write_atomically(node.directory / "config.yaml", node.config("small"))
    reloaded = systemctl("reload", "migd")
    assert reloaded.returncode == 0, reloaded.stderr + node.systemd.journal("-u", "migd")
    assert all_hold(node.state, SMALL)

    expected = 7  # 2 stops, 2 starts, the refresh, the plugin's stop and start
    events = wait_for(
        lambda: found if len(found := node.events(mark)) >= expected else None,
        "the clients cycled, the refresh run and the device plugin restarted",
        timeout=15,
    )
    # Stopped in reverse order, both started again once both were stopped; the idle
    # client is left alone. The starts are queued in order (--no-block), but the units
    # have no ordering between them, so systemd runs the two start jobs at once.
    cycle = [e for e in events if "dcgm" in e or "exporter" in e]
    assert cycle[:2] == ["stop exporter-standin", "stop dcgm-standin"]
    assert sorted(cycle[2:]) == ["start dcgm-standin", "start exporter-standin"]
    assert not any("idle-standin" in e for e in events)
    assert events.count("cdi-refresh") == 1
    assert [e for e in events if "plugin" in e] == ["stop plugin-standin", "start plugin-standin"]
    labels = node.labels()
    assert labels["nvidia.com/mig.config"] == "small"
    assert labels["nvidia.com/mig.config.state"] == "success"
    active = {u: node.systemd.show(u, "ActiveState")["ActiveState"] for u in CLIENTS}
    assert active == {
        "dcgm-standin.service": "active",
        "exporter-standin.service": "active",
        "idle-standin.service": "inactive",
    }
