"""A GPU that cannot be read (GPU_IS_LOST) fails alone: the other GPUs are reconciled.

The pure part (selection, planning, ``assert``'s differences, drift, metrics) over
hand-made snapshots; the rest through the simulator, with ``--lost-gpu``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from geometry_support import (
    H200,
    add_fault,
    apply_text,
    config_text,
    edit_node,
    geometry,
    make_node,
    mutating_calls,
    read_node,
    run_migd,
    scratch_dir,
    snapshot,
    stats,
)
from paths import installed_config
from planning_support import H200 as H200_MODEL
from planning_support import gpu
from prometheus_client import generate_latest

from migd.core.compare import mismatches
from migd.core.config import ConfigEntry
from migd.core.layout import GpuState, NodeSnapshot
from migd.core.plan import Action, format_plan
from migd.core.planner import plan_node
from migd.core.selection import desired_layouts
from migd.daemon.loop import find_drift
from migd.daemon.metrics import MetricsObserver
from migd.daemon.view import DaemonView, GpuView, Phase
from migd.errors import NvmlError
from migd.gpu.executor import GpuOutcome, format_result
from migd.gpu.nvml import NvmlAdapter
from migd.sim import faults as sim_faults
from migd.sim.state import Faults

DEMO = "1g.18gb=2,2g.35gb=1,3g.71gb=1"
LOST = "unreadable: GPU_IS_LOST (nvmlDeviceGetHandleByIndex)"


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    with scratch_dir(tmp_path) as path:
        yield path


def lost(index: int) -> GpuState:
    """What the adapter lists for a GPU lost before anything of it was read."""
    return GpuState(
        index=index,
        uuid="",
        name="",
        pci_device_id=0,
        pci_subsystem_id=0,
        bus_id="",
        memory_total_bytes=0,
        mig_capable=False,
        mig_enabled=False,
        mig_pending=False,
        error="GPU_IS_LOST",
        error_call="nvmlDeviceGetHandleByIndex",
    )


def entry(*, devices: str | tuple[int, ...] = "all", enabled: bool = True) -> ConfigEntry:
    return ConfigEntry(
        devices=devices,
        device_filters=(),
        mig_enabled=enabled,
        mig_devices=(("3g.71gb", 2),) if enabled else (),
        path="mig-configs.test[0]",
        line=10,
    )


def three_with_one_lost() -> NodeSnapshot:
    return NodeSnapshot((gpu(H200_MODEL, 0), lost(1), gpu(H200_MODEL, 2)))


# ---------------------------------------------------------------------------
# The pure core
# ---------------------------------------------------------------------------


def test_an_unreadable_gpu_says_why() -> None:
    assert gpu(H200_MODEL, 0).readable and gpu(H200_MODEL, 0).unreadable_reason == ""
    assert not lost(1).readable
    assert lost(1).unreadable_reason == LOST
    assert replace(lost(1), error_call="").unreadable_reason == "unreadable: GPU_IS_LOST"


@pytest.mark.parametrize("devices", ["all", (0, 1, 2), (1,)])
def test_selection_gives_an_unreadable_gpu_no_layout_and_no_problem(
    devices: str | tuple[int, ...],
) -> None:
    # Even an entry naming it by index (which a non-MIG GPU would make an error) leaves
    # it out: nothing about it is known, and the config is not wrong for that.
    snapshot = three_with_one_lost()
    desired = desired_layouts(snapshot, [entry(devices=devices)])
    assert 1 not in [d.index for d in desired]
    plan = plan_node(snapshot, desired)
    assert plan.gpu(1).action is Action.UNREADABLE and plan.gpu(1).target is None
    assert 1 not in [d.index for d in plan.desired]


def test_plan_assert_and_drift_name_the_unreadable_gpu() -> None:
    snapshot = three_with_one_lost()
    desired = desired_layouts(snapshot, [entry()])
    text = format_plan(plan_node(snapshot, desired))
    assert f"GPU 1: {LOST}; nothing can be planned on it" in text
    found = mismatches(snapshot, desired)
    assert (found[0].index, found[0].readable, found[0].unreadable) == (1, False, LOST)
    assert len(found) == 3  # GPUs 0 and 2 hold nothing yet
    drift = find_drift(snapshot, desired)
    assert [(d.index, d.repairable) for d in drift] == [(1, False), (0, True), (2, True)]
    assert drift[0].text == LOST


def test_metrics_list_an_unreadable_gpu_without_failing() -> None:
    snapshot = three_with_one_lost()
    observer = MetricsObserver()
    observer.published(
        DaemonView(
            pid=1,
            phase=Phase.DEGRADED,
            status_line="",
            config_file="/etc/migd/config.yaml",
            gpus=tuple(
                GpuView(g.index, g.readable, "noop" if g.readable else "failed")
                for g in snapshot.gpus
            ),
            snapshot=snapshot,
            desired=desired_layouts(snapshot, [entry()]),
        )
    )
    text = generate_latest(observer.registry)
    assert b'migd_gpu_config_in_sync{gpu="1"} 0.0' in text
    assert b'migd_gpu_config_in_sync{gpu="0"} 1.0' in text


# ---------------------------------------------------------------------------
# Through the simulator
# ---------------------------------------------------------------------------


def test_a_lost_gpu_fails_alone_and_converges_once_back(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [H200] * 3)
    text = config_text({"demo": DEMO})
    edit_node(state, lambda n: sim_faults.add_lost_gpu(n, 1))
    untouched = geometry(read_node(state))[1]
    first = apply_text(text, "demo")
    assert first.exit_code == 1
    assert [g.outcome for g in first.gpus] == [
        GpuOutcome.APPLIED,
        GpuOutcome.FAILED,
        GpuOutcome.APPLIED,
    ]
    failed = first.gpus[1]
    assert failed.error == "GPU_IS_LOST" and failed.mutations == 0
    assert failed.reason.startswith(LOST), failed.reason
    assert f"GPU 1: FAILED (GPU_IS_LOST): {LOST}" in "\n".join(format_result(first))
    assert geometry(read_node(state))[1] == untouched
    assert [g.index for g in first.snapshot.gpus] == [0, 1, 2]
    assert not first.snapshot.gpu(1).readable
    # Back on the bus: the next apply converges GPU 1 and leaves the others alone.
    edit_node(state, lambda n: replace(n, faults=Faults()))
    calls = mutating_calls(stats(state))
    second = apply_text(text, "demo")
    assert second.exit_code == 0
    assert [g.outcome for g in second.gpus] == [
        GpuOutcome.NOOP,
        GpuOutcome.APPLIED,
        GpuOutcome.NOOP,
    ]
    assert mutating_calls(stats(state)) == calls + 9
    assert len(set(geometry(read_node(state)).values())) == 1


def test_a_gpu_lost_after_it_was_read_keeps_its_identity(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [H200] * 2)
    with NvmlAdapter.open(read_only=True) as nvml:
        before = nvml.snapshot().gpu(1)
        edit_node(state, lambda n: sim_faults.add_lost_gpu(n, 1))
        after = nvml.snapshot().gpu(1)
    assert after.error == "GPU_IS_LOST" and after.error_call == "nvmlDeviceGetMigMode"
    assert (after.uuid, after.name, after.bus_id) == (before.uuid, before.name, before.bus_id)
    assert after.profiles == () and after.instances == ()


def test_errors_about_the_whole_node_still_fail_the_read(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [H200] * 2)
    add_fault(state, "nvmlDeviceGetCount_v2", "UNKNOWN")
    with pytest.raises(NvmlError, match="UNKNOWN"):
        snapshot()
    add_fault(state, "nvmlDeviceGetHandleByIndex_v2", "DRIVER_NOT_LOADED", gpu=1)
    with pytest.raises(NvmlError, match="DRIVER_NOT_LOADED"):
        snapshot()


def test_migd_apply_on_a_node_with_a_lost_gpu(scratch: Path) -> None:
    state = scratch / "node.json"
    demo = str(installed_config("demo.yaml", scratch))
    assert run_migd("sim", "init", str(state), "--gpu", "H200x3").returncode == 0
    assert run_migd("sim", "fault", str(state), "--lost-gpu", "1").returncode == 0
    first = run_migd("--simulate", str(state), "apply", "-f", demo)
    assert first.returncode == 1, first.stdout + first.stderr
    assert first.stdout.count("applied 1g.18gb×2+2g.35gb+3g.71gb") == 2
    assert f"GPU 1: FAILED (GPU_IS_LOST): {LOST}" in first.stdout
    checked = run_migd("--simulate", str(state), "assert", "-f", demo)
    assert checked.returncode == 1 and f"GPU 1: {LOST}" in checked.stdout
    exported = run_migd("--simulate", str(state), "export")
    assert exported.returncode == 1 and "GPU 1: unreadable: GPU_IS_LOST" in exported.stderr
    assert run_migd("sim", "fault", str(state), "--clear").returncode == 0
    second = run_migd("--simulate", str(state), "apply", "-f", demo)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "GPU 1: applied 1g.18gb×2+2g.35gb+3g.71gb" in second.stdout
    assert second.stdout.count("nothing to do") == 2
