"""Compute-instance rules through plain pynvml calls: sizes, ids, capacity, teardown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest
from sim_support import address, ci_placements, compute_instances, create_ci, create_gi

from migd.formats.gpu_models import load_model, model_names
from migd.sim import node as sim_node
from migd.sim.store import StateStore

MIG_MODELS = sorted({load_model(n).key for n in model_names() if load_model(n).mig_capable})
SHARED = pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED


def _size_rule(c: int, g: int) -> bool:
    """nvml.md: a c-slice CI fits a g-slice GI when c <= g and, if c < g, 2c <= g+1."""
    return c <= g and (c == g or 2 * c <= g + 1)


def _ci_profiles(gi: Any) -> list[Any]:
    infos = []
    for index in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
        try:
            infos.append(pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, index, SHARED))
        except pynvml.NVMLError_NotSupported:
            continue
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
            gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT, SHARED
        )
    return infos


def _mig_gpu(node: Callable[..., Path], nvml: Callable[[Path], Any], key: str) -> Any:
    nvml(node(key, clients=False))
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceSetMigMode(device, 1) == 0
    return device


def _add_process(path: Path, pid: int, gpu: int, gi: int | None, ci: int | None) -> None:
    store = StateStore(path)
    store.transaction(lambda tx: tx.commit(sim_node.add_process(tx.node, pid, gpu, gi, ci)))


def _remove_process(path: Path, pid: int) -> None:
    store = StateStore(path)
    store.transaction(lambda tx: tx.commit(sim_node.remove_process(tx.node, pid)))


@pytest.mark.parametrize("key", MIG_MODELS)
def test_ci_sizes_placements_and_ids(
    key: str, node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    """Every GI offers exactly the CI sizes the size rule allows; every CI placement is
    accepted alone; the first CI gets id 0; the default CI spans the GI; the CI profile
    id equals its index."""
    device = _mig_gpu(node, nvml, key)
    for gi_profile in load_model(key).gi_profiles:
        gi = create_gi(device, gi_profile.id, *gi_profile.placements[0])
        g = pynvml.nvmlGpuInstanceGetInfo(gi)
        infos = _ci_profiles(gi)
        slices = {info.sliceCount for info in infos}
        assert slices == {c for c in (1, 2, 3, 4, 7) if _size_rule(c, gi_profile.slice_count)}
        for info in infos:
            assert info.version == 0
            assert info.name.startswith("MIG ")
            if info.sliceCount < gi_profile.slice_count:
                assert info.name == f"MIG {info.sliceCount}c.{gi_profile.name[4:]}"
            for placement in ci_placements(gi, info.id):
                ci = create_ci(gi, info.id, *placement)
                got = pynvml.nvmlComputeInstanceGetInfo(ci)
                assert (got.id, got.profileId) == (0, info.id)
                assert (got.placement.start, got.placement.size) == placement
                assert address(got.gpuInstance) == address(gi)
                assert address(got.device) == address(device)
                pynvml.nvmlComputeInstanceDestroy(ci)
        # The default (full) CI takes the whole GI: nothing else fits beside it.
        full = pynvml.nvmlGpuInstanceCreateComputeInstance(gi, infos[-1].id)
        assert pynvml.nvmlComputeInstanceGetInfo(full).id == 0
        for info in infos:
            assert pynvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, info.id) == 0
        pynvml.nvmlComputeInstanceDestroy(full)
        pynvml.nvmlGpuInstanceDestroy(gi)
        assert g.profileId == gi_profile.id


def test_ci_ids_are_the_lowest_free(h200: Any) -> None:
    pynvml.nvmlDeviceSetMigMode(h200, 1)
    gi = create_gi(h200, 0, 0, 8)  # 7g.141gb
    cis = [create_ci(gi, 0, start, 1) for start in (0, 1, 2)]
    assert [pynvml.nvmlComputeInstanceGetInfo(ci).id for ci in cis] == [0, 1, 2]
    pynvml.nvmlComputeInstanceDestroy(cis[1])
    again = pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 1)  # a 2c, wherever it fits
    info = pynvml.nvmlComputeInstanceGetInfo(again)
    assert info.id == 1 and info.profileId == 1
    assert info.placement.start in (4,) and info.placement.size == 2
    assert address(pynvml.nvmlGpuInstanceGetComputeInstanceById(gi, 1)) == address(again)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlGpuInstanceGetComputeInstanceById(gi, 5)
    assert len(compute_instances(gi, 0)) == 2


def test_ci_limits(h200: Any) -> None:
    pynvml.nvmlDeviceSetMigMode(h200, 1)
    gi = create_gi(h200, 9, 0, 4)  # 3g.71gb: 1c x3, 2c, 3c
    assert pynvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, 0) == 3
    create_ci(gi, 0, 2, 1)
    assert pynvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, 0) == 2
    assert pynvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, 1) == 1
    create_ci(gi, 1, 0, 2)
    for profile in (0, 1, 2):  # three compute slices used: nothing more
        assert pynvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, profile) == 0
        with pytest.raises(pynvml.NVMLError_InsufficientResources):
            pynvml.nvmlGpuInstanceCreateComputeInstance(gi, profile)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        create_ci(gi, 1, 1, 2)  # not a placement of 2c in a Hopper 3g
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 3)  # no 4c in a 3g
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 9)


def test_ampere_ci_capacity_and_first_fit(
    node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    """ci-profiles.yaml examples: a 4g GI with a 1c at 0 has 1c 3, 2c 1, 4g 0 left;
    without a placement Ampere takes the lowest free start."""
    device = _mig_gpu(node, nvml, "A100-SXM4-40GB")
    gi = create_gi(device, 5, 0, 4)
    ci = pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 0)
    assert pynvml.nvmlComputeInstanceGetInfo(ci).placement.start == 0
    left = [pynvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, p) for p in (0, 1, 3)]
    assert left == [3, 1, 0]
    starts = [
        pynvml.nvmlComputeInstanceGetInfo(
            pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 0)
        ).placement.start
        for _ in range(3)
    ]
    assert starts == [1, 2, 3]


def test_in_use_on_destroy(node: Callable[..., Path], nvml: Callable[[Path], Any]) -> None:
    path = node("H200")
    nvml(path)
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    pynvml.nvmlDeviceSetMigMode(device, 1)
    gi = create_gi(device, 14, 0, 2)
    gi_id = pynvml.nvmlGpuInstanceGetInfo(gi).id
    ci = pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 1)
    # A GI with a CI inside.
    with pytest.raises(pynvml.NVMLError_InUse) as raised:
        pynvml.nvmlGpuInstanceDestroy(gi)
    assert str(raised.value) == "In use by another client"
    # A CI with a process on it.
    _add_process(path, 4242, 0, gi_id, 0)
    with pytest.raises(pynvml.NVMLError_InUse):
        pynvml.nvmlComputeInstanceDestroy(ci)
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(device)
    assert [(p.pid, p.gpuInstanceId, p.computeInstanceId) for p in procs] == [(4242, gi_id, 0)]
    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(device, 0)
    assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(mig)] == [4242]
    _remove_process(path, 4242)
    pynvml.nvmlComputeInstanceDestroy(ci)
    # A GI with a process but no CI.
    _add_process(path, 4343, 0, gi_id, None)
    with pytest.raises(pynvml.NVMLError_InUse):
        pynvml.nvmlGpuInstanceDestroy(gi)
    # MIG cannot be disabled while GIs exist.
    with pytest.raises(pynvml.NVMLError_InUse):
        pynvml.nvmlDeviceSetMigMode(device, 0)
    _remove_process(path, 4343)
    pynvml.nvmlGpuInstanceDestroy(gi)
    assert pynvml.nvmlDeviceSetMigMode(device, 0) == 0
    assert pynvml.nvmlDeviceGetMigMode(device) == [0, 0]
