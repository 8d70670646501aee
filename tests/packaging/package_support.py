"""What the package tests share: building the .deb, and reading one."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from paths import REPO

BUILD_DEB = REPO / "packaging" / "build-deb"
# What packaging/build-deb needs (it would install the missing ones as root; a test
# does not install anything on the machine).
BUILD_TOOLS = ("dpkg-dev", "debhelper", "help2man", "python3", "python3-venv", "lintian")


@dataclass(frozen=True)
class Built:
    """The packages of one session: ``first`` (revision 1) and ``newer`` (revision 2)."""

    first: Path
    newer: Path
    build_output: str  # packaging/build-deb's standard output for ``first``


def missing_tools() -> list[str]:
    missing = []
    for package in BUILD_TOOLS:
        shown = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if shown.stdout != "installed":
            missing.append(package)
    return missing


def build(revision: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUILD_DEB), "--revision", str(revision)],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        check=False,
    )
