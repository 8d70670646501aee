"""The real-systemd tests share the daemon tests' support module (tests/daemon_support.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
