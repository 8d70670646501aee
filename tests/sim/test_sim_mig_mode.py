"""MIG mode changes, resets, reboots, and GPUs that refuse: Ampere vs Hopper, clients,
passthrough, non-root callers, a GPU without MIG, a lost GPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest
from sim_support import create_ci, create_gi, gi_layout, migd, show

from migd.sim import node as sim_node
from migd.sim.store import StateStore

IN_USE = pynvml.NVML_ERROR_IN_USE
RESET_REQUIRED = pynvml.NVML_ERROR_RESET_REQUIRED


def _reset(path: Path, *gpus: int) -> None:
    StateStore(path).transaction(lambda tx: tx.commit(sim_node.reset_gpus(tx.node, gpus)))


def test_ampere_mode_change_waits_for_a_reset(
    node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    """A system client holds a simulated A100: the change stays pending, activationStatus
    IN_USE comes back as a plain int, and ``migd sim reset`` applies it."""
    path = node("A100-SXM4-40GB", "A100-SXM4-40GB")
    nvml(path)
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    status = pynvml.nvmlDeviceSetMigMode(device, pynvml.NVML_DEVICE_MIG_ENABLE)
    assert status == IN_USE and type(status) is int
    assert pynvml.nvmlDeviceGetMigMode(device) == [0, 1]
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(device) == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceCreateGpuInstance(device, 19)
    migd("sim", "reset", str(path), "--bus-id", "00000000:18:00.0")
    assert pynvml.nvmlDeviceGetMigMode(device) == [1, 1]
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(device) == 7
    second = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetMigMode(second) == [0, 0]  # only the GPU named was reset
    # Withdrawing a pending change needs no reset.
    assert pynvml.nvmlDeviceSetMigMode(second, 1) == IN_USE
    assert pynvml.nvmlDeviceSetMigMode(second, 0) == 0
    assert pynvml.nvmlDeviceGetMigMode(second) == [0, 0]


def test_ampere_without_clients_applies_at_once(
    node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    nvml(node("A30", clients=False))
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceSetMigMode(device, 1) == 0
    assert pynvml.nvmlDeviceGetMigMode(device) == [1, 1]


@pytest.mark.parametrize("model", ["H100-SXM5-80GB", "H200"])
def test_hopper_mode_change_is_immediate(
    model: str, node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    path = node(model)  # system clients do not matter on Hopper
    nvml(path)
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceSetMigMode(device, 1) == 0
    assert pynvml.nvmlDeviceGetMigMode(device) == [1, 1]
    assert pynvml.nvmlDeviceSetMigMode(device, 0) == 0
    assert pynvml.nvmlDeviceGetMigMode(device) == [0, 0]
    # ...unless a process runs on the GPU.
    StateStore(path).transaction(
        lambda tx: tx.commit(sim_node.add_process(tx.node, 77, 0, None, None))
    )
    assert pynvml.nvmlDeviceSetMigMode(device, 1) == IN_USE
    assert pynvml.nvmlDeviceGetMigMode(device) == [0, 1]
    StateStore(path).transaction(lambda tx: tx.commit(sim_node.remove_process(tx.node, 77)))
    assert pynvml.nvmlDeviceSetMigMode(device, 1) == 0
    assert pynvml.nvmlDeviceGetMigMode(device) == [1, 1]


def test_reset_destroys_instances_and_invalidates_handles(
    node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    path = node("H200")
    nvml(path)
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    pynvml.nvmlDeviceSetMigMode(device, 1)
    gi = create_gi(device, 9, 4, 4)
    ci = create_ci(gi, 2, 0, 4)
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(device, 0)
    _reset(path, 0)
    assert pynvml.nvmlDeviceGetMigMode(device) == [1, 1]  # Hopper: MIG stays on, empty
    for call, handle in (
        (pynvml.nvmlGpuInstanceGetInfo, gi),
        (pynvml.nvmlComputeInstanceGetInfo, ci),
        (pynvml.nvmlDeviceGetUUID, mig),
    ):
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            call(handle)
    # A new GI at the same place gets the same id, but old handles stay dead.
    again = create_gi(device, 9, 4, 4)
    assert pynvml.nvmlGpuInstanceGetInfo(again).id == 2
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpuInstanceDestroy(gi)


def test_passthrough_needs_a_reboot(node: Callable[..., Path], nvml: Callable[[Path], Any]) -> None:
    path = node("A100-SXM4-80GB", passthrough=True)
    nvml(path)
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetVirtualizationMode(device) == 1  # PASSTHROUGH
    assert pynvml.nvmlDeviceSetMigMode(device, 1) == RESET_REQUIRED
    assert pynvml.nvmlDeviceGetMigMode(device) == [0, 1]
    result = migd("sim", "reset", str(path), "--gpu", "0", check=False)
    assert result.returncode == 1
    assert "passthrough" in result.stderr and "reboot" in result.stderr
    assert pynvml.nvmlDeviceGetMigMode(device) == [0, 1]


def test_a_reboot_makes_pending_modes_current_and_clears_every_instance(
    node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    """``migd sim reboot``: what a passthrough VM needs to finish a mode change. Pending
    modes become current, GPU and compute instances and processes are gone, MIG mode
    persists, and handles of the old instances are dead."""
    path = node("A100-SXM4-80GB", "H200", passthrough=True)
    nvml(path)
    a100, h200 = (pynvml.nvmlDeviceGetHandleByIndex(i) for i in (0, 1))
    assert pynvml.nvmlDeviceSetMigMode(a100, 1) == RESET_REQUIRED
    assert pynvml.nvmlDeviceSetMigMode(h200, 1) == pynvml.NVML_SUCCESS  # Hopper: at once
    gi = create_gi(h200, 9, 4, 4)
    create_ci(gi, 0, 0, 1)
    migd("sim", "process", str(path), "add", "--gpu", "1", "--gi", "2", "--ci", "0", "--pid", "77")
    migd("sim", "fault", str(path), "--call", "nvmlDeviceCreateGpuInstance", "--code", "UNKNOWN")

    out = migd("sim", "reboot", str(path)).stdout
    assert "1 process(es) gone" in out
    assert "GPU 0  MIG enabled (was pending)" in out
    assert "GPU 1  MIG enabled, 1 GPU instance(s) gone" in out
    assert pynvml.nvmlDeviceGetMigMode(a100) == [1, 1]
    assert pynvml.nvmlDeviceGetMigMode(h200) == [1, 1]
    assert gi_layout(a100) == [] and gi_layout(h200) == []
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpuInstanceDestroy(gi)
    shown = show(path)
    assert all(g["processes"] == [] for g in shown["gpus"])
    assert [f["call"] for f in shown["faults"]["calls"]] == ["nvmlDeviceCreateGpuInstance"]

    # Turning MIG off is pending on the A100 too, until the next reboot; MIG stays on
    # across a reboot with nothing pending.
    assert pynvml.nvmlDeviceSetMigMode(a100, 0) == RESET_REQUIRED
    migd("sim", "reboot", str(path))
    assert pynvml.nvmlDeviceGetMigMode(a100) == [0, 0]
    assert pynvml.nvmlDeviceGetMigMode(h200) == [1, 1]


def test_reset_refused_while_processes_run(node: Callable[..., Path]) -> None:
    path = node("H200", "H200")
    StateStore(path).transaction(
        lambda tx: tx.commit(sim_node.add_process(tx.node, 9, 1, None, None))
    )
    with pytest.raises(sim_node.ResetRefused, match="process"):
        _reset(path, 0, 1)


def test_non_root_gets_no_permission(
    node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    nvml(node("H200", root=False))
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetMigMode(device) == [0, 0]  # queries still work
    assert pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(device, 19) == 7
    with pytest.raises(pynvml.NVMLError_NoPermission) as raised:
        pynvml.nvmlDeviceSetMigMode(device, 1)
    assert str(raised.value) == "Insufficient Permissions"


def test_a_gpu_without_mig(node: Callable[..., Path], nvml: Callable[[Path], Any]) -> None:
    nvml(node("L40S"))
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetName(device) == "NVIDIA L40S"
    assert pynvml.nvmlDeviceGetPciInfo(device).pciDeviceId == 0x26B910DE
    for call, args in (
        (pynvml.nvmlDeviceGetMigMode, ()),
        (pynvml.nvmlDeviceSetMigMode, (1,)),
        (pynvml.nvmlDeviceGetGpuInstanceProfileInfo, (0,)),
        (pynvml.nvmlDeviceGetGpuInstanceProfileInfoById, (19,)),
        (pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity, (19,)),
        (pynvml.nvmlDeviceCreateGpuInstance, (19,)),
        (pynvml.nvmlDeviceGetGpuInstanceById, (0,)),
        (pynvml.nvmlDeviceGetMigDeviceHandleByIndex, (0,)),
    ):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call(device, *args)
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(device) == 0
    assert not pynvml.nvmlDeviceIsMigDeviceHandle(device)


def test_a_lost_gpu(node: Callable[..., Path], nvml: Callable[[Path], Any]) -> None:
    path = node("H200", "H200")
    nvml(path)
    device = pynvml.nvmlDeviceGetHandleByIndex(1)
    migd("sim", "fault", str(path), "--lost-gpu", "1")
    assert pynvml.nvmlDeviceGetCount() == 2
    for call, args in (
        (pynvml.nvmlDeviceGetMigMode, (device,)),
        (pynvml.nvmlDeviceGetName, (device,)),
        (pynvml.nvmlDeviceGetHandleByIndex, (1,)),
        (pynvml.nvmlDeviceGetHandleByPciBusId, ("00000000:2A:00.0",)),
    ):
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call(*args)
    assert pynvml.nvmlDeviceGetMigMode(pynvml.nvmlDeviceGetHandleByIndex(0)) == [0, 0]
    assert migd("sim", "reset", str(path), "--gpu", "1", check=False).returncode == 1
    migd("sim", "fault", str(path), "--clear")
    assert pynvml.nvmlDeviceGetMigMode(device) == [0, 0]
