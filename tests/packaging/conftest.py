"""Fixtures of the package tests: the .deb built by packaging/build-deb, twice.

The packages are built once per test session, as the README says (``packaging/build-deb``,
then ``--revision 2`` for a newer build to upgrade to), and copied out of dist/.
Building needs Debian's packaging tools; where they are missing the tests are skipped
with the command that installs them (CI installs them).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The package tests use this folder's support, the systemd harness (tests/systemd) and
# the simulator's call counts (tests/reliability).
HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent / "systemd", HERE.parent / "reliability"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from package_support import Built, build, missing_tools  # noqa: E402


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    if not shutil.which("dpkg-query"):
        pytest.skip("building the package needs Debian's dpkg")
    missing = missing_tools()
    if missing:
        pytest.skip(f"building the package needs: apt-get install {' '.join(missing)}")
    keep = tmp_path_factory.mktemp("debs")
    paths = []
    outputs = []
    for revision in (1, 2):
        done = build(revision)
        assert done.returncode == 0, f"packaging/build-deb failed:\n{done.stderr[-4000:]}"
        path = Path(done.stdout.splitlines()[-1])
        paths.append(Path(shutil.copy2(path, keep / path.name)))
        outputs.append(done.stdout)
    yield Built(first=paths[0], newer=paths[1], build_output=outputs[0])
