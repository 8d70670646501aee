"""migd's benchmarks: how much faster and gentler than mig-parted, in numbers.

Run them with ``python -m bench`` (``--quick`` for the smoke version); the figures
and the command that produced them go to BENCHMARKS.md.

The benchmarks share test code with the tests rather than keep copies of it (the
layout oracle, the sd_notify receiver, the clean environment of a migd process):
the tests' folder is put on the path here, after everything else, so those modules
import by the plain names the tests use.
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
