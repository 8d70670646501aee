"""What every folder of tests shares: the support modules beside this file.

This folder goes on ``sys.path``, so tests in tests/sim and tests/systemd import
``paths``, ``daemon_support`` and the rest by plain name, as the tests here do.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
