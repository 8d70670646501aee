"""GPU-instance placement rules on every MIG-capable model, through plain pynvml calls.

The expectations are restated here from reference/nvml.md in the plainest way (an
overlap, instanceCount, compute slices, the media-engine rule), independently of the
simulator's code.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest
from sim_support import create_gi, gi_layout, gi_placements

from migd.core.gpu_models import GpuModel
from migd.formats.gpu_models import load_model, model_names

MODEL_KEYS = sorted({load_model(name).key for name in model_names()})
MIG_MODELS = [key for key in MODEL_KEYS if load_model(key).mig_capable]

Placement = tuple[int, int]


def _overlap(a: Placement, b: Placement) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def _media(name: str) -> str:
    if name.endswith("+me.all"):
        return "all"
    if name.endswith("+me"):
        return "me"
    if name.endswith("-me"):
        return "none"
    return "plain"


def _coexist(model: GpuModel, infos: list[Any]) -> bool:
    """Whether GIs of these profiles (placements aside) fit one GPU together."""
    if sum(i.sliceCount for i in infos) > model.compute_slices:
        return False
    if len(infos) > model.max_gpu_instances:
        return False
    for info in infos:
        if sum(1 for other in infos if other.id == info.id) > info.instanceCount:
            return False
    media = [_media(i.name) for i in infos]
    if media.count("me") + media.count("all") > 1:
        return False
    return not ("all" in media and any(m not in ("all", "none") for m in media))


def _partition_id(slot_count: int, start: int, size: int) -> int:
    """Whole GPU 0; halves 1-2; quarters 3-6; eighths 7-14 (nvml.md)."""
    first = {slot_count: 0, slot_count // 2: 1, slot_count // 4: 3, slot_count // 8: 7}[size]
    return first + start // size


def _profiles(device: Any) -> list[Any]:
    infos = []
    for index in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            infos.append(pynvml.nvmlDeviceGetGpuInstanceProfileInfo(device, index))
        except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument):
            continue
    return infos


def _open_mig(node: Callable[..., Path], nvml: Callable[[Path], Any], key: str) -> Any:
    nvml(node(key, clients=False))
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceSetMigMode(device, pynvml.NVML_DEVICE_MIG_ENABLE) == 0
    assert pynvml.nvmlDeviceGetMigMode(device) == [1, 1]
    return device


@pytest.mark.parametrize("key", MIG_MODELS)
def test_every_placement_and_every_pair(
    key: str, node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    """Each legal placement is accepted on an empty GPU, gets its partition id, and then
    every second placement is refused exactly when it overlaps or breaks a limit."""
    model = load_model(key)
    device = _open_mig(node, nvml, key)
    infos = _profiles(device)
    assert {i.id for i in infos} == {g.id for g in model.gi_profiles}
    everything = [(info, p) for info in infos for p in gi_placements(device, info.id)]
    for i, (info_a, a) in enumerate(everything):
        gi_a = create_gi(device, info_a.id, *a)
        got = pynvml.nvmlGpuInstanceGetInfo(gi_a)
        assert (got.profileId, got.placement.start, got.placement.size) == (info_a.id, *a)
        assert got.id == _partition_id(model.slot_count, *a)
        for j, (info_b, b) in enumerate(everything):
            if _overlap(a, b) or not _coexist(model, [info_a, info_b]):
                with pytest.raises(pynvml.NVMLError_InsufficientResources):
                    create_gi(device, info_b.id, *b)
            elif j > i:  # a pair that fits is symmetric: try it in one order
                pynvml.nvmlGpuInstanceDestroy(create_gi(device, info_b.id, *b))
        pynvml.nvmlGpuInstanceDestroy(gi_a)
    assert gi_layout(device) == []


@pytest.mark.parametrize("key", MIG_MODELS)
def test_placements_outside_the_list_are_invalid(
    key: str, node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    model = load_model(key)
    device = _open_mig(node, nvml, key)
    for info in _profiles(device):
        legal = set(gi_placements(device, info.id))
        size = next(iter(legal))[1]
        wrong = {(start, size) for start in range(model.slot_count)} - legal
        wrong |= {(start, size + 1) for start, _ in legal}
        for placement in sorted(wrong):
            with pytest.raises(pynvml.NVMLError_InvalidArgument):
                create_gi(device, info.id, *placement)
    assert gi_layout(device) == []


@pytest.mark.parametrize("key", MIG_MODELS)
def test_remaining_capacity_counts_what_still_fits(
    key: str, node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    """With one GI in place, every profile's remaining capacity is the most GIs of it
    that can still be added (found here by trying every set of placements)."""
    model = load_model(key)
    device = _open_mig(node, nvml, key)
    infos = _profiles(device)
    placements = {info.id: gi_placements(device, info.id) for info in infos}
    for info in infos:
        assert pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(device, info.id) == min(
            info.instanceCount, _most(model, [], [], info, placements[info.id])
        )
    for info_a in infos:
        a = placements[info_a.id][-1]
        gi_a = create_gi(device, info_a.id, *a)
        for info in infos:
            expected = _most(model, [info_a], [a], info, placements[info.id])
            assert pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(device, info.id) == expected, (
                info_a.name,
                a,
                info.name,
            )
        pynvml.nvmlGpuInstanceDestroy(gi_a)


def _most(
    model: GpuModel,
    present: list[Any],
    taken: list[Placement],
    info: Any,
    candidates: list[Placement],
) -> int:
    free = [p for p in candidates if not any(_overlap(p, t) for t in taken)]
    for n in range(len(free), 0, -1):
        for chosen in itertools.combinations(free, n):
            disjoint = all(not _overlap(x, y) for x, y in itertools.combinations(chosen, 2))
            if disjoint and _coexist(model, [*present, *([info] * n)]):
                return n
    return 0


@pytest.mark.parametrize("key", ["H100-SXM5-80GB", "H200-SXM-141GB", "A100-SXM4-40GB"])
def test_the_mig_guide_creation_order_example(
    key: str, node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    """Without placements the driver's slot order decides: 19,19,14,9 fails at the 9,
    9,19,14,19 succeeds (MIG User Guide)."""
    device = _open_mig(node, nvml, key)
    for profile_id in (19, 19, 14):
        pynvml.nvmlDeviceCreateGpuInstance(device, profile_id)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        pynvml.nvmlDeviceCreateGpuInstance(device, 9)
    assert gi_layout(device) == [(4, 14, 2, 2), (11, 19, 4, 1), (13, 19, 6, 1)]
    for gi_id in (4, 11, 13):
        pynvml.nvmlGpuInstanceDestroy(pynvml.nvmlDeviceGetGpuInstanceById(device, gi_id))

    for profile_id in (9, 19, 14, 19):
        pynvml.nvmlDeviceCreateGpuInstance(device, profile_id)
    assert gi_layout(device) == [(2, 9, 4, 4), (4, 14, 2, 2), (7, 19, 0, 1), (8, 19, 1, 1)]


def test_seven_1g_without_placement_get_the_observed_ids(
    node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    """H100 transcript: `-cgi 19x7` makes GI ids 13, 11, 12, 7, 8, 9, 10 in that order."""
    device = _open_mig(node, nvml, "H100-SXM5-80GB")
    ids = [
        pynvml.nvmlGpuInstanceGetInfo(pynvml.nvmlDeviceCreateGpuInstance(device, 19)).id
        for _ in range(7)
    ]
    assert ids == [13, 11, 12, 7, 8, 9, 10]
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        pynvml.nvmlDeviceCreateGpuInstance(device, 19)
    assert pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(device, 19) == 0


def test_one_media_engine_gi_per_gpu(h200: Any) -> None:
    assert pynvml.nvmlDeviceSetMigMode(h200, 1) == 0
    create_gi(h200, 20, 0, 1)
    assert pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h200, 20) == 0
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_gi(h200, 20, 1, 1)
    create_gi(h200, 19, 1, 1)  # a plain 1g still fits beside it
