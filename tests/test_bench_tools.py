"""The benchmarks apply layouts the way ``migd apply`` does, so their figures are the
figures users get: on the same node and config, ``bench.tools.migd_apply`` makes
exactly the NVML calls the ``migd apply`` command makes, reads included.

Both run GPU after GPU here: in parallel, two GPUs may both learn a compute-instance
table the first time they need it, so the count of those reads depends on timing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from geometry_support import H200, make_node, read_node, restart_from, scratch_dir, stats

from bench.tools import CONFIG_NAME, config_text, migd_apply
from migd.cli import main

# A change that keeps, destroys and creates: MIG already on, the first layout held.
BEFORE = {0: ("1g.18gb",) * 7, 1: ("3g.71gb", "3g.71gb")}
AFTER = {0: ("1g.18gb", "1g.18gb", "2g.35gb", "3g.71gb"), 1: ("3g.71gb", "2g.35gb", "2g.35gb")}


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    with scratch_dir(tmp_path) as path:
        yield path


def migd_apply_command(state: Path, config: Path) -> int:
    """``migd --simulate STATE apply -f CONFIG``, in this process, as the command runs it."""
    logger = logging.getLogger("migd")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        return main(
            [
                "--simulate",
                str(state),
                "apply",
                "-f",
                str(config),
                "-c",
                CONFIG_NAME,
                "--sequential",
            ]
        )
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


@pytest.mark.parametrize("start", ["MIG off", "layout held"])
def test_the_benchmark_makes_the_nvml_calls_migd_apply_makes(scratch: Path, start: str) -> None:
    state = make_node(scratch / "node.json", [H200, H200], clients=False)
    if start == "layout held":
        migd_apply(str(state), BEFORE)
    node = read_node(state)
    config = scratch / "config.yaml"
    config.write_text(config_text(AFTER))
    config.chmod(0o644)

    restart_from(state, node)  # a fresh call log
    assert migd_apply_command(state, config) == 0
    by_command = stats(state)
    restart_from(state, node)
    result = migd_apply(str(state), AFTER, parallel=False)
    assert result.exit_code == 0
    by_benchmark = stats(state)

    assert by_benchmark == by_command
    assert by_command["nvmlDeviceCreateGpuInstanceWithPlacement"]["SUCCESS"] > 0
