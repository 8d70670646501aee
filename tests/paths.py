"""Where the tests find the repository and the shared reference folder beside it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# CI keeps the shared reference folder at ../shared, beside the repository clone.
SHARED = REPO.parent / "shared"
# mig-parted's own files (configs, hooks, GPU Operator ConfigMaps), kept as read.
ANCHORS = SHARED / "anchors" / "mig-parted"
# NVML as a real 8xH200 node answered it: what the simulator and the adapter must match.
H200_FIXTURE = SHARED / "fixtures" / "h200-nvml-readout.json"
