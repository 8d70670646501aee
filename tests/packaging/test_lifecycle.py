"""The package on a node: install, reload, upgrade, remove, purge, under a real systemd.

Each test boots systemd on an overlay root (``Systemd(..., overlay_root=True)``), where
apt and dpkg install the built .deb exactly as on a node while the machine's own dpkg
database, /usr and /etc stay untouched. A drop-in points the packaged migd at a
simulated 2xH200 node, whose call log counts every mutating NVML call.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import yaml
from daemon_support import BALANCED, layouts, sim, wait_for
from package_support import Built
from reliability_support import mutating_calls
from systemd_harness import Systemd, requires_systemd, scratch_directory, simulated_node_drop_in

pytestmark = requires_systemd(overlay_root=True)

# Points the packaged unit at the simulated node (as `migd install-unit --simulate`
# does), and records, each time the daemon stops, which migd package dpkg then holds:
# a restart on upgrade must come after the new files are in place.
RECORD_STOPS = """\
ExecStopPost=+/bin/sh -c "dpkg-query -W -f='$${{Version}}\\\\n' migd >> {stops}"
"""

# A stand-in for NVIDIA's nvidia-mig-manager package: its unit applies the selected
# config at boot; it owns /usr/bin/nvidia-mig-parted and /etc/nvidia-mig-manager.
MIG_MANAGER_CONFIG = yaml.safe_dump(
    {
        "version": "v1",
        "mig-configs": {
            "all-disabled": [{"devices": "all", "mig-enabled": False}],
            "all-balanced": [{"devices": "all", "mig-enabled": True, "mig-devices": BALANCED}],
        },
    }
)
MIG_MANAGER_UNIT = """\
[Unit]
Description=stand-in for NVIDIA's nvidia-mig-manager

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/nvidia-mig-parted

[Install]
WantedBy=multi-user.target
"""
MIG_MANAGER_FILES = {
    "DEBIAN/control": (
        "Package: nvidia-mig-manager\nVersion: 0.5.5-1\nArchitecture: all\n"
        "Maintainer: stand-in <stand-in@migd.invalid>\n"
        "Description: stand-in for NVIDIA's MIG manager\n"
    ),
    "DEBIAN/conffiles": "/etc/nvidia-mig-manager/config.yaml\n",
    "DEBIAN/postinst": (
        "#!/bin/sh\nset -e\n"
        'if [ "$1" = configure ]; then systemctl enable --now nvidia-mig-manager.service; fi\n'
    ),
    "DEBIAN/prerm": "#!/bin/sh\nset -e\nsystemctl disable --now nvidia-mig-manager.service\n",
    "usr/bin/nvidia-mig-parted": "#!/bin/sh\necho nvidia-mig-parted stand-in\n",
    "lib/systemd/system/nvidia-mig-manager.service": MIG_MANAGER_UNIT,
    "etc/nvidia-mig-manager/config.yaml": MIG_MANAGER_CONFIG,
}
EXECUTABLE = ("DEBIAN/postinst", "DEBIAN/prerm", "usr/bin/nvidia-mig-parted")
TAKE_OVER = "/etc/systemd/system/migd.service.d/nvidia-mig-manager.conf"
TAKE_OVER_DROP_IN = """\
[Service]
Environment=MIGD_CONFIG_FILE=/etc/nvidia-mig-manager/config.yaml
Environment=MIG_PARTED_SELECTED_CONFIG=all-balanced
"""


class Node:
    """A booted overlay-root host with a simulated GPU node and the built packages."""

    def __init__(self, built: Built) -> None:
        self.directory = scratch_directory("package")
        self.state = self.directory / "node.json"
        self.stops = self.directory / "stops.log"
        sim("init", str(self.state), "--gpu", "H200x2")
        for deb in (built.first, built.newer):
            shutil.copy2(deb, self.directory / deb.name)
        self.first = self.directory / built.first.name
        self.newer = self.directory / built.newer.name
        drop_in = simulated_node_drop_in(self.state, self.directory) + RECORD_STOPS.format(
            stops=self.stops
        )
        self.systemd = Systemd(
            self.directory, {"migd.service.d/simulate.conf": drop_in}, overlay_root=True
        )

    def boot(self) -> Node:
        self.systemd.boot()
        # A container image's policy-rc.d forbids starting services on install; a node
        # has none.
        self.must("rm", "-f", "/usr/sbin/policy-rc.d")
        return self

    def close(self) -> None:
        self.systemd.close()

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.systemd.run(*argv, timeout=timeout)

    def must(self, *argv: str, timeout: float = 300) -> str:
        done = self.run(*argv, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def apt(self, *args: str) -> str:
        return self.must(
            "env", "DEBIAN_FRONTEND=noninteractive",
            "apt-get", "-y", "-q", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0", *args,
        )  # fmt: skip

    def show(self, *props: str) -> dict[str, str]:
        return self.systemd.show("migd", *props)

    def wait_ready(self, selected: str) -> None:
        def ready() -> bool:
            shown = self.show("ActiveState", "StatusText")
            return shown["ActiveState"] == "active" and shown["StatusText"].startswith(
                f"ready: {selected},"
            )

        wait_for(ready, f"migd active and ready with {selected}", timeout=60, interval=0.2)

    def mutating_calls(self) -> int:
        return mutating_calls(self.state)

    def package_status(self, package: str) -> str:
        return self.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", package).stdout.strip()

    def exists(self, path: str) -> bool:
        return (
            self.run("test", "-e", path).returncode == 0 or self.systemd.inside(path).is_symlink()
        )


@pytest.fixture
def node(built: Built) -> Iterator[Node]:
    made = Node(built)
    try:
        yield made.boot()
    finally:
        made.close()


def test_install_reload_upgrade_remove_purge(node: Node) -> None:
    untouched = json.loads(sim("show", str(node.state), "--json"))

    # Install: enabled, started, ready, and no GPU touched by the default config.
    node.apt("install", str(node.first))
    assert node.package_status("migd") == "ii"
    node.wait_ready("unmanaged")
    assert node.systemd.systemctl("is-enabled", "migd").stdout.strip() == "enabled"
    assert node.mutating_calls() == 0
    assert json.loads(sim("show", str(node.state), "--json")) == untouched
    assert node.must("stat", "-c", "%U:%G %a", "/etc/migd/config.yaml").split() == [
        "root:root",
        "644",
    ]
    assert (
        node.must("migd", "--version").strip()
        == node.must("nvidia-mig-parted", "--version").strip()
    )
    owned = node.must("dpkg-query", "-L", "migd").splitlines()

    # The operator chooses a layout and reloads: it is applied.
    node.must("sed", "-i", "s/^selected-config: unmanaged$/selected-config: all-balanced/",
              "/etc/migd/config.yaml")  # fmt: skip
    node.must("systemctl", "reload", "migd")
    assert all(held == BALANCED for held in layouts(node.state).values())
    node.wait_ready("all-balanced")
    before_upgrade = node.mutating_calls()
    assert before_upgrade > 0
    pid = node.show("MainPID")["MainPID"]

    # Upgrade with dpkg -i: the edited conffile stays, the daemon restarts once the new
    # files are in place, and finds nothing to change.
    node.must("dpkg", "-i", str(node.newer))
    assert node.must("dpkg-query", "-W", "-f=${Version}", "migd") == node.newer.name.split("_")[1]
    assert "selected-config: all-balanced" in node.must("cat", "/etc/migd/config.yaml")
    node.wait_ready("all-balanced")
    assert node.show("MainPID")["MainPID"] != pid
    assert node.stops.read_text().split() == [node.newer.name.split("_")[1]]
    assert node.mutating_calls() == before_upgrade
    assert all(held == BALANCED for held in layouts(node.state).values())

    # Remove: the daemon stops, the GPUs stay as they are, the conffile stays.
    node.apt("remove", "migd")
    assert node.package_status("migd") == "rc"
    assert node.show("ActiveState")["ActiveState"] == "inactive"
    assert node.mutating_calls() == before_upgrade
    assert all(held == BALANCED for held in layouts(node.state).values())
    assert node.exists("/etc/migd/config.yaml")
    assert not node.exists("/usr/lib/migd")

    # Purge: nothing of migd is left, and still no GPU touched.
    node.apt("purge", "migd")
    assert node.package_status("migd") in ("", "un", "pn")
    left = [
        path
        for path in owned
        if path != "/." and node.exists(path) and not shared_directory(node, path)
    ]
    assert left == []
    for path in (
        "/etc/migd",
        "/var/lib/migd",
        "/run/migd",
        "/etc/systemd/system/multi-user.target.wants/migd.service",
    ):
        assert not node.exists(path), path
    assert node.mutating_calls() == before_upgrade
    assert all(held == BALANCED for held in layouts(node.state).values())


def shared_directory(node: Node, path: str) -> bool:
    """A directory another installed package also owns (/usr/bin, /usr/share/man/man8,
    /lib: a link to /usr/lib on a merged-/usr system)."""
    is_dir = node.run("test", "-d", path).returncode == 0
    return is_dir and node.run("dpkg-query", "-S", path).returncode == 0


def test_installing_migd_takes_over_from_nvidia_mig_manager(node: Node) -> None:
    stand_in = node.directory / "nvidia-mig-manager"
    for name, text in MIG_MANAGER_FILES.items():
        path = stand_in / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755 if name in EXECUTABLE else 0o644)
    deb = node.directory / "nvidia-mig-manager_0.5.5-1_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(stand_in), str(deb)],
        capture_output=True,
        check=True,
    )
    node.must("dpkg", "-i", str(deb))
    shown = node.systemd.show("nvidia-mig-manager", "ActiveState", "UnitFileState")
    assert shown == {"ActiveState": "active", "UnitFileState": "enabled"}

    node.apt("install", str(node.first))
    # nvidia-mig-manager is removed (its config files kept), its service is gone,
    # nvidia-mig-parted is migd's, and migd runs.
    assert node.package_status("nvidia-mig-manager") == "rc"
    assert node.systemd.show("nvidia-mig-manager", "LoadState", "ActiveState") == {
        "LoadState": "not-found",
        "ActiveState": "inactive",
    }
    assert node.must("nvidia-mig-parted", "--version").startswith("migd ")
    node.wait_ready("unmanaged")
    assert node.mutating_calls() == 0
    # mig-parted's config is there and migd reads it unchanged.
    checked = node.must(
        "migd", "validate", "-f", "/etc/nvidia-mig-manager/config.yaml", "-c", "all-balanced",
        "--gpu-model", "H200",
    )  # fmt: skip
    assert "valid, 2 mig-configs" in checked

    # The switch-over packaging/README.md describes: a drop-in runs migd on that file
    # with the config nvidia-mig-manager selected.
    node.systemd.inside(TAKE_OVER).parent.mkdir(parents=True, exist_ok=True)
    node.systemd.inside(TAKE_OVER).write_text(TAKE_OVER_DROP_IN)
    node.must("systemctl", "daemon-reload")
    node.must("systemctl", "restart", "migd")
    node.wait_ready("all-balanced")
    assert all(held == BALANCED for held in layouts(node.state).values())
