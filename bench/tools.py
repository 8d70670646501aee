"""The two tools under test, each applying per-GPU layouts to a simulated node in-process.

- migd: the path ``migd apply`` and the daemon take — parse a config, then
  :func:`migd.node.change.apply_with_services` with the services its settings name (none
  here): read the node, resolve the layouts, plan, and reconcile inside the hooks and
  client units, with explicit placements, GPUs in parallel or one after another.
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
from migd.formats.config_file import parse_config
from migd.gpu.executor import ReconcileOptions, ReconcileResult
from migd.gpu.nvml import NvmlAdapter
from migd.node.change import NodeServices, apply_with_services

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
    services = NodeServices.from_settings(config.settings)
    sim.activate(state)
    with NvmlAdapter.open() as nvml:
        report = apply_with_services(nvml, config, CONFIG_NAME, options, services, post_boot=True)
    assert report.result is not None  # a report without one is raised (ChangeAborted)
    return report.result


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
