"""packaging/build-deb: one command, a .deb in dist/, lintian clean, the right files in it."""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
from pathlib import Path

from package_support import Built
from paths import REPO

import migd


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def deb_members(deb: Path) -> dict[str, tarfile.TarInfo]:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
        return {m.name.removeprefix("."): m for m in tar.getmembers()}


def deb_file(deb: Path, path: str) -> bytes:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
        member = tar.extractfile("." + path)
        assert member is not None, path
        return member.read()


def test_build_deb_prints_the_package_it_wrote_in_dist(built: Built) -> None:
    last = built.build_output.splitlines()[-1]
    assert last == str(REPO / "dist" / f"migd_{migd.__version__}-1_all.deb")
    assert deb_field(built.first, "Version") == f"{migd.__version__}-1"
    assert deb_field(built.newer, "Version") == f"{migd.__version__}-2"


def test_lintian_reports_no_error_and_no_warning_left_unexplained(built: Built) -> None:
    linted = subprocess.run(
        ["lintian", "--fail-on", "error,warning", str(built.first)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert not re.search(r"^[EW]: ", linted.stdout, re.M), linted.stdout


def test_depends_only_on_debian_python(built: Built) -> None:
    depends = [d.strip() for d in deb_field(built.first, "Depends").split(",")]
    assert len(depends) == 1 and re.fullmatch(r"python3\.\d+", depends[0]), depends
    # Debian's own interpreter, known to apt on this (Debian) machine.
    assert subprocess.run(["apt-cache", "show", depends[0]], capture_output=True).returncode == 0
    assert deb_field(built.first, "Conflicts") == "nvidia-mig-manager"
    assert deb_field(built.first, "Replaces") == "nvidia-mig-manager"


def test_the_package_holds_what_an_operator_expects(built: Built) -> None:
    members = deb_members(built.first)
    for path in (
        "/usr/bin/migd",
        "/usr/bin/nvidia-mig-parted",
        "/usr/share/man/man8/migd.8.gz",
        "/usr/share/man/man8/nvidia-mig-parted.8.gz",
        "/usr/share/doc/migd/copyright",
        "/usr/share/doc/migd/examples/config.yaml",
        "/usr/share/doc/migd/examples/demo.yaml",
        "/usr/share/doc/migd/examples/hooks/hooks.yaml",
        "/usr/share/doc/migd/examples/prometheus/migd-alerts.yml",
        "/usr/share/doc/migd/examples/prometheus/prometheus.yml",
    ):
        assert path in members, path
    assert members["/usr/bin/migd"].linkname == "../lib/migd/bin/migd"
    # The unit and the default config, as the repository has them.
    unit = deb_file(built.first, "/lib/systemd/system/migd.service")
    assert unit == (REPO / "systemd" / "migd.service").read_bytes()
    config = members["/etc/migd/config.yaml"]
    assert (config.uname, config.gname, config.mode) == ("root", "root", 0o644)
    assert (
        deb_file(built.first, "/etc/migd/config.yaml")
        == (REPO / "configs/config.yaml").read_bytes()
    )
    # No bytecode (the postinst compiles it) and no compiled code (Architecture: all).
    assert not [p for p in members if "__pycache__" in p or p.endswith((".pyc", ".so"))]


def test_conffile_and_maintainer_scripts(built: Built) -> None:
    control = subprocess.run(
        ["dpkg-deb", "--info", str(built.first), "conffiles"], capture_output=True, text=True
    )
    assert control.stdout.split() == ["/etc/migd/config.yaml"]
    postrm = subprocess.run(
        ["dpkg-deb", "--info", str(built.first), "postrm"], capture_output=True, text=True
    ).stdout
    assert "rm -rf /etc/migd /var/lib/migd" in postrm


def test_every_shipped_python_distribution_is_in_the_copyright_file(built: Built) -> None:
    listed = deb_file(built.first, "/usr/share/doc/migd/python-packages.txt").decode()
    names = [line.split("==")[0] for line in listed.split()]
    assert {"migd", "nvidia-ml-py", "PyYAML", "prometheus_client", "watchdog"} <= set(names)
    copyright_text = deb_file(built.first, "/usr/share/doc/migd/copyright").decode()
    modules = {
        "nvidia-ml-py": "pynvml.py",
        "PyYAML": "yaml/",
        "prometheus_client": "prometheus_client/",
        "watchdog": "watchdog/",
    }
    for name in names:
        if name != "migd":
            assert name in modules, f"{name} is shipped: add it to packaging/debian/copyright"
            assert f"site-packages/{modules[name]}" in copyright_text, name
