"""The harness's overlay root: a namespace that may write anywhere, the machine untouched.

Package tests run dpkg and apt in such a namespace; these tests check the building
block itself: writes under /usr, /etc and the dpkg database stay in the namespace, the
test's own directory is shared, systemd manages units installed there, and a namespace
with a disk of its own reboots and keeps what was written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from systemd_harness import Systemd, requires_systemd, scratch_directory

pytestmark = requires_systemd(overlay_root=True)

DPKG_STATUS = Path("/var/lib/dpkg/status")

PROBE_UNIT = """\
[Unit]
Description=writes where a test never may on the machine

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'echo unit > /usr/lib/migd-overlay-probe'
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def host() -> Iterator[Systemd]:
    systemd = Systemd(scratch_directory("overlay-root"), {}, overlay_root=True)
    try:
        yield systemd.boot()
    finally:
        systemd.close()


def test_writes_stay_in_the_namespace_and_the_test_directory_is_shared(host: Systemd) -> None:
    status_before = digest(DPKG_STATUS)
    root = host.run("findmnt", "--noheadings", "--output", "FSTYPE", "/")
    assert root.stdout.strip() == "overlay", root
    probes = ("/usr/lib/migd-overlay-probe", "/etc/migd-overlay-probe")
    for probe in probes:
        assert not Path(probe).exists()
    wrote = host.run(
        "/bin/sh", "-ec",
        f"echo ns > {probes[0]}; echo ns > {probes[1]}; echo ns >> {DPKG_STATUS}; "
        f"echo shared > {host.directory}/from-inside",
    )  # fmt: skip
    assert wrote.returncode == 0, wrote.stderr

    # The namespace sees its writes; the machine sees none of them.
    assert host.inside(probes[0]).read_text() == "ns\n"
    assert host.inside(DPKG_STATUS).read_text().endswith("ns\n")
    for probe in probes:
        assert not Path(probe).exists()
    assert digest(DPKG_STATUS) == status_before
    # The test's directory is the machine's own.
    assert (host.directory / "from-inside").read_text() == "shared\n"


def test_units_installed_in_the_namespace_are_managed_by_its_systemd(host: Systemd) -> None:
    unit = Path("/etc/systemd/system/migd-overlay-probe.service")
    host.inside(unit).write_text(PROBE_UNIT)
    assert not unit.exists()
    assert host.systemctl("daemon-reload").returncode == 0
    started = host.systemctl("start", "migd-overlay-probe.service")
    assert started.returncode == 0, started.stderr
    assert host.inside("/usr/lib/migd-overlay-probe").read_text() == "unit\n"
    assert not Path("/usr/lib/migd-overlay-probe").exists()


# A machine's boot target: what it enabled (multi-user.target), and a D-Bus with logind,
# which `shutdown -r` asks to schedule the reboot.
MACHINE_TARGET = """\
[Unit]
Description=a machine that keeps its disk
Wants=multi-user.target systemd-journald-dev-log.socket dbus.socket systemd-logind.service
"""

ENABLED_UNIT = """\
[Unit]
Description=enabled inside the namespace

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
"""


def test_a_namespace_with_a_disk_reboots_and_keeps_what_was_written() -> None:
    directory = scratch_directory("disk")
    machine = Systemd(
        directory,
        {"migd-test.target": MACHINE_TARGET},
        overlay_root=True,
        disk=directory / "disk",
        private_network=False,
    )
    try:
        machine.boot()
        # The machine's own enabled units stay below the namespace's /etc/systemd/system.
        assert machine.run("ls", "/etc/systemd/system/multi-user.target.wants").returncode != 0
        started = machine.run("cut", "-d", " ", "-f", "22", "/proc/1/stat").stdout
        unit = "/etc/systemd/system/migd-disk-probe.service"
        machine.inside(unit).write_text(ENABLED_UNIT)
        done = machine.run(
            "/bin/sh", "-ec",
            "echo kept > /var/lib/migd-disk-probe; systemctl enable migd-disk-probe.service",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert not Path("/var/lib/migd-disk-probe").exists()

        rebooted = machine.run("shutdown", "-r", "0")
        assert rebooted.returncode == 0, rebooted.stderr
        assert machine.wait_down(timeout=30) == "reboot"
        machine.boot()
        assert machine.run("cut", "-d", " ", "-f", "22", "/proc/1/stat").stdout != started
        assert machine.inside("/var/lib/migd-disk-probe").read_text() == "kept\n"
        shown = machine.show("migd-disk-probe.service", "ActiveState", "UnitFileState")
        assert shown == {"ActiveState": "active", "UnitFileState": "enabled"}
        assert not Path(unit).exists()
    finally:
        machine.close()
    assert machine.wait_down(timeout=0) == "ended"


# Kernel settings systemd raises as PID 1 (bump_unix_max_dgram_qlen, bump_file_max_and_nr_open);
# the first belongs to the network namespace, which a host of the fleet tests shares.
RAISED_BY_SYSTEMD = ("net/unix/max_dgram_qlen", "fs/file-max", "fs/nr_open")


def test_a_namespace_on_the_machines_network_leaves_its_kernel_settings_alone() -> None:
    before = {name: Path("/proc/sys", name).read_text() for name in RAISED_BY_SYSTEMD}
    directory = scratch_directory("sysctl")
    machine = Systemd(
        directory,
        {"migd-test.target": MACHINE_TARGET},
        overlay_root=True,
        disk=directory / "disk",
        private_network=False,
    )
    try:
        machine.boot()
        tried = machine.run("/bin/sh", "-c", "echo 1000 > /proc/sys/net/unix/max_dgram_qlen")
        assert tried.returncode != 0
        assert "Read-only file system" in tried.stderr
    finally:
        machine.close()
    assert {name: Path("/proc/sys", name).read_text() for name in RAISED_BY_SYSTEMD} == before
