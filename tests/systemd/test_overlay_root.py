"""The harness's overlay root: a namespace that may write anywhere, the machine untouched.

Package tests run dpkg and apt in such a namespace; these tests check the building
block itself: writes under /usr, /etc and the dpkg database stay in the namespace, the
test's own directory is shared, and systemd manages units installed there.
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
