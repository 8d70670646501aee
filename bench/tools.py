"""The two tools under test, each applying per-GPU layouts to a simulated node in-process.

- migd: its real path — parse a config, read the node, resolve the layouts
  (selection), plan and reconcile (:func:`migd.reconcile.reconcile_config`), with
  explicit placements, GPUs in parallel or one after another.
- the mig-parted model (:mod:`bench.migparted_model`): GPU after GPU, as mig-parted
  runs, each through plain pynvml.

Both run against the same simulated libnvidia-ml in the same process, so neither
pays a process start the other does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pynvml

from bench.layouts import Layout, counts
from bench.migparted_model import MigPartedModel, ModelResult
from migd import sim
from migd.commands.common import simulated_reset_command
from migd.config import parse_config
from migd.nvml import NvmlAdapter
from migd.reconcile import ReconcileOptions, ReconcileResult, reconcile_config

CONFIG_NAME = "bench"


def config_text(layouts: Mapping[int, Layout]) -> str:
    """A mig-parted v1 config giving each GPU its layout (one entry per GPU)."""
    lines = ["version: v1", "mig-configs:", f"  {CONFIG_NAME}:"]
    for index in sorted(layouts):
        devices = ", ".join(f'"{name}": {n}' for name, n in counts(layouts[index]).items())
        lines += [
            f"    - devices: [{index}]",
            "      mig-enabled: true",
            f"      mig-devices: {{{devices}}}",
        ]
    return "\n".join(lines) + "\n"


def migd_apply(
    state: str, layouts: Mapping[int, Layout], *, parallel: bool = True
) -> ReconcileResult:
    """``migd --simulate STATE apply`` for these layouts, in this process."""
    config = parse_config(config_text(layouts).encode(), "<bench>")
    # The reset command `migd --simulate` uses; Hopper GPUs never need it here.
    options = ReconcileOptions(parallel=parallel, reset_command=simulated_reset_command(state))
    sim.activate(state)
    with NvmlAdapter.open() as nvml:
        return reconcile_config(nvml, config, CONFIG_NAME, options)


def migparted_apply(
    state: str, layouts: Mapping[int, Layout], tie_order: Sequence[str]
) -> list[ModelResult]:
    """The mig-parted model applying these layouts, GPU after GPU."""
    sim.activate(state)
    pynvml.nvmlInit()
    try:
        model = MigPartedModel(tie_order)
        return [model.apply(index, counts(layouts[index])) for index in sorted(layouts)]
    finally:
        pynvml.nvmlShutdown()
