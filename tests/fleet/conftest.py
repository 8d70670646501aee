"""Fixtures of the fleet tests: the migd package, built once, and the fleet of nodes.

The fleet tests (marked ``fleet``) are not part of the default test run: `.ci/run` runs
them as a step of their own (`pytest -m fleet tests/fleet`). They need root, Debian's
openssh-server, the Debian packaging tools and Ansible (``pip install -e '.[fleet]'``);
where one is missing they are skipped with the reason.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

# This folder's support, the systemd harness (tests/systemd), the package build
# (tests/packaging) and the simulator's call counts (tests/reliability).
HERE = Path(__file__).resolve().parent
for path in (HERE, *(HERE.parent / d for d in ("systemd", "packaging", "reliability"))):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from package_support import build, missing_tools  # noqa: E402


@pytest.fixture(scope="session")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The migd .deb, as packaging/build-deb makes it (the role's migd_package)."""
    if not shutil.which("dpkg-query"):
        pytest.skip("building the package needs Debian's dpkg")
    missing = missing_tools()
    if missing:
        pytest.skip(f"building the package needs: apt-get install {' '.join(missing)}")
    done = build(1)
    assert done.returncode == 0, f"packaging/build-deb failed:\n{done.stderr[-4000:]}"
    built = Path(done.stdout.splitlines()[-1])
    return Path(shutil.copy2(built, tmp_path_factory.mktemp("deb") / built.name))
