"""Where the tests find the repository, its test data, and mig-parted's own files.

The project carries every file its tests need under tests/data. The one exception is
mig-parted's own files (its configs, hooks and the GPU Operator's ConfigMaps, kept as
read in the reference folder at ../shared beside a CI checkout): a test whose purpose is
to read them unchanged gets them through :func:`anchor`, which skips the test, saying
so, when that folder is not there. Nothing here runs at import time, so every checkout
collects the same tests wherever it sits.
"""

from __future__ import annotations

from pathlib import Path

from ci_policy import skip_allowed_in_ci

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
# NVML as a real 8xH200 node answered it: what the simulator and the adapter must match.
H200_FIXTURE = DATA / "h200-nvml-readout.json"
# mig-parted's own files, verbatim, in the reference folder beside a CI checkout.
ANCHORS = REPO.parent / "shared" / "anchors" / "mig-parted"


def installed_config(name: str, directory: Path) -> Path:
    """configs/NAME copied into ``directory`` as an operator installs it (mode 0644): migd
    run as root then judges that install, not the modes this checkout happens to have."""
    path = directory / name
    path.write_bytes((REPO / "configs" / name).read_bytes())
    path.chmod(0o644)
    return path


def anchor(name: str) -> Path:
    """mig-parted's own file ``name``; the calling test is skipped when it is absent."""
    path = ANCHORS / name
    if not path.is_file():
        skip_allowed_in_ci(
            f"mig-parted's own {name} is not here: the reference folder ../shared "
            "is not beside this checkout (this test only checks that file)"
        )
    return path
