"""The fake library as pynvml sees it: symbols, errors, handles, buffers, activation."""

from __future__ import annotations

import ctypes
import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest
from sim_support import (
    address,
    compute_instances,
    create_ci,
    create_gi,
    gi_placements,
    gpu_instances,
)

from migd import sim
from migd.core import nvml_codes
from migd.sim import fakelib, symbols
from migd.sim import node as sim_node
from migd.sim.state import Flags, NodeState
from migd.sim.store import StateStore


def _enabled(node: NodeState) -> NodeState:
    return dataclasses.replace(
        node,
        gpus=tuple(dataclasses.replace(g, mig_current=1, mig_pending=1) for g in node.gpus),
    )


def test_the_symbols_are_those_pynvml_fetches() -> None:
    """Every provided symbol is a name the pinned pynvml fetches, and the fake provides
    exactly the documented list (the names faults and stats use)."""
    source = Path(pynvml.__file__).read_text()
    fetched = set(re.findall(r'_nvmlGetFunctionPointer\("(\w+)"\)', source))
    assert set(symbols.SYMBOLS) <= fetched
    assert set(symbols.SYMBOLS) == fakelib.PROVIDED
    assert set(symbols.SYMBOLS) >= symbols.MUTATING


def test_return_codes_match_pynvml() -> None:
    for name, value in nvml_codes.CODES.items():
        constant = "NVML_SUCCESS" if name == "SUCCESS" else f"NVML_ERROR_{name}"
        assert getattr(pynvml, constant) == value, name


def test_error_classes_and_texts(h200: Any) -> None:
    # pynvml asks the library for the texts it does not know itself.
    assert str(pynvml.NVMLError(pynvml.NVML_ERROR_IN_USE)) == "In use by another client"
    assert (
        str(pynvml.NVMLError(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)) == "Insufficient Resources"
    )
    assert str(pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_STATE)) == "Invalid state"
    assert pynvml.nvmlErrorString(pynvml.NVML_ERROR_IN_USE) == "In use by another client"
    assert isinstance(pynvml.NVMLError(19), pynvml.NVMLError_InUse)
    # pynvml set restype on the symbol it fetched: it must have accepted that.
    assert pynvml.nvmlLib.nvmlErrorString.restype is ctypes.c_char_p


def test_a_missing_symbol_is_function_not_found(h200: Any) -> None:
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetPowerUsage(h200)
    with pytest.raises(AttributeError):
        _ = pynvml.nvmlLib.nvmlDeviceGetPowerUsage


def test_uninitialized(node: Callable[..., Path]) -> None:
    sim.activate(node("H200"))
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    pynvml.nvmlInit()
    pynvml.nvmlInit()
    pynvml.nvmlShutdown()
    assert pynvml.nvmlDeviceGetCount() == 1  # still one nvmlInit open
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()


def test_no_state_file_is_no_driver(tmp_path: Path) -> None:
    sim.activate(tmp_path / "missing.json")
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()


def test_activate_switches_nodes(node: Callable[..., Path], nvml: Callable[[Path], Any]) -> None:
    nvml(node("H200", "H200", name="a.json"))
    assert pynvml.nvmlDeviceGetCount() == 2
    pynvml.nvmlShutdown()
    nvml(node("L40S", name="b.json"))
    assert pynvml.nvmlDeviceGetCount() == 1
    assert pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0)) == "NVIDIA L40S"


def test_device_lookups(node: Callable[..., Path], nvml: Callable[[Path], Any]) -> None:
    nvml(node(*["H200"] * 10))
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(10)]
    buses = [pynvml.nvmlDeviceGetPciInfo(h).busId for h in handles]
    assert buses[:8] == [
        f"00000000:{b}:00.0" for b in ["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]
    ]
    assert buses[8:] == ["00000001:18:00.0", "00000001:2A:00.0"]
    uuids = [pynvml.nvmlDeviceGetUUID(h) for h in handles]
    assert len(set(uuids)) == 10
    for i, handle in enumerate(handles):
        assert address(pynvml.nvmlDeviceGetHandleByUUID(uuids[i])) == address(handle)
        assert address(pynvml.nvmlDeviceGetHandleByPciBusId(buses[i])) == address(handle)
        assert pynvml.nvmlDeviceGetIndex(handle) == i
    for form in ("0000:5d:00.0", "5D:00.0", "00000000:5D:00.0"):
        assert address(pynvml.nvmlDeviceGetHandleByPciBusId(form)) == address(handles[3])
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetHandleByIndex(10)


def test_mig_devices(h200: Any) -> None:
    """MIG devices enumerate by GI id then CI id, whatever the creation order."""
    pynvml.nvmlDeviceSetMigMode(h200, 1)
    late = create_gi(h200, 14, 4, 2)  # GI id 5
    early = create_gi(h200, 9, 0, 4)  # GI id 1
    create_ci(late, 1, 0, 2)
    create_ci(early, 0, 1, 1)
    create_ci(early, 0, 0, 1)
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(h200) == 7
    found = []
    for index in range(7):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h200, index)
        except pynvml.NVMLError_NotFound:
            break
        assert pynvml.nvmlDeviceIsMigDeviceHandle(mig)
        assert address(pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)) == address(h200)
        uuid = pynvml.nvmlDeviceGetUUID(mig)
        assert uuid.startswith("MIG-")
        assert address(pynvml.nvmlDeviceGetHandleByUUID(uuid)) == address(mig)
        found.append(
            (
                pynvml.nvmlDeviceGetGpuInstanceId(mig),
                pynvml.nvmlDeviceGetComputeInstanceId(mig),
                pynvml.nvmlDeviceGetName(mig),
                pynvml.nvmlDeviceGetMemoryInfo(mig).total >> 20,
            )
        )
    assert found == [
        (1, 0, "NVIDIA H200 MIG 1c.3g.71gb", 71424),
        (1, 1, "NVIDIA H200 MIG 1c.3g.71gb", 71424),
        (5, 0, "NVIDIA H200 MIG 2g.35gb", 33280),
    ]
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(h200)


def test_handles_die_with_their_instance(h200: Any) -> None:
    pynvml.nvmlDeviceSetMigMode(h200, 1)
    gi = create_gi(h200, 19, 3, 1)
    ci = pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 0)
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h200, 0)
    assert address(pynvml.nvmlDeviceGetGpuInstanceById(h200, 10)) == address(gi)
    pynvml.nvmlComputeInstanceDestroy(ci)
    for call in (pynvml.nvmlComputeInstanceGetInfo, pynvml.nvmlComputeInstanceDestroy):
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            call(ci)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetGpuInstanceId(mig)
    pynvml.nvmlGpuInstanceDestroy(gi)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpuInstanceGetInfo(gi)
    # The same slot again: same GI id, a different handle; the old one stays invalid.
    again = create_gi(h200, 19, 3, 1)
    assert pynvml.nvmlGpuInstanceGetInfo(again).id == 10
    assert address(again) != address(gi)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpuInstanceGetInfo(gi)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 0)


def test_buffers_and_arguments_as_c_takes_them(h200: Any) -> None:
    pynvml.nvmlDeviceSetMigMode(h200, 1)
    for start in (0, 1, 2):
        create_gi(h200, 19, start, 1)
    # A short instance array: INSUFFICIENT_SIZE and the count needed.
    array = (pynvml.c_nvmlGpuInstance_t * 2)()
    count = ctypes.c_uint(2)
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        pynvml.nvmlDeviceGetGpuInstances(h200, 19, array, ctypes.byref(count))
    assert count.value == 3
    assert len(gpu_instances(h200, 19, capacity=3)) == 3
    # A placement buffer sized from instanceCount is short for the +me profile (1 instance,
    # 7 placements): the real driver overruns it, the simulator refuses.
    info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(
        h200, pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1
    )
    placements = (pynvml.c_nvmlGpuInstancePlacement_t * info.instanceCount)()
    count = ctypes.c_uint(info.instanceCount)
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(h200, 20, placements, ctypes.byref(count))
    assert count.value == 7
    # A placement passed by value where C takes a pointer.
    placement = pynvml.c_nvmlGpuInstancePlacement_t()
    placement.start, placement.size = 4, 1
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(h200, 19, placement)
    # pointer() works as well as byref().
    gi = pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(h200, 19, ctypes.pointer(placement))
    assert pynvml.nvmlGpuInstanceGetInfo(gi).placement.start == 4
    # A name buffer too small.
    name = ctypes.create_string_buffer(4)
    assert pynvml.nvmlLib.nvmlDeviceGetName(h200, name, ctypes.c_uint(4)) == 7
    # A handle of a GPU that is not there.
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetMigMode(pynvml.c_nvmlDevice_t())


def _scan(device_count: int) -> int:
    """What a daemon reads per GPU: basics, mode, every profile, placements, capacity,
    every GI and CI, processes. Returns the number of NVML calls made."""
    calls = 0
    for index in range(device_count):
        device = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetUUID(device)
        pynvml.nvmlDeviceGetPciInfo(device)
        pynvml.nvmlDeviceGetMigMode(device)
        calls += 4
        for profile in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
            calls += 1
            try:
                info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(device, profile)
            except pynvml.NVMLError:
                continue
            gi_placements(device, info.id)
            pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(device, info.id)
            calls += 3
            for gi in gpu_instances(device, info.id, capacity=info.instanceCount):
                pynvml.nvmlGpuInstanceGetInfo(gi)
                calls += 2
                for ci_profile in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
                    calls += 1
                    try:
                        ci_info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                            gi, ci_profile, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
                        )
                    except pynvml.NVMLError:
                        continue
                    for ci in compute_instances(gi, ci_info.id):
                        pynvml.nvmlComputeInstanceGetInfo(ci)
                        calls += 2
        pynvml.nvmlDeviceGetComputeRunningProcesses(device)
        calls += 2
    return calls


def test_a_full_scan_of_eight_gpus_is_fast(tmp_path: Path, nvml: Callable[[Path], Any]) -> None:
    node = _enabled(sim_node.new_node(["H200-SXM-141GB"] * 8, seed="x", flags=Flags()))
    for index in range(8):
        for _ in range(7):
            node, gi = sim_node.create_gpu_instance(node, index, 19, None)
            node, _ = sim_node.create_compute_instance(node, index, gi.serial, 0, None)
    path = tmp_path / "full.json"
    StateStore(path).create(node)
    nvml(path)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        calls = _scan(8)
        best = min(best, time.perf_counter() - started)
    assert calls > 900
    assert best < 0.1, f"{calls} calls took {best * 1000:.0f} ms"
