"""What changed on a GPU between two reads, in words (the drift check's report)."""

from __future__ import annotations

from dataclasses import replace

from migd.core.compare import gpu_changes
from migd.core.gpu_models import blank_gpu
from migd.core.layout import ComputeInstance, GpuInstance, GpuState, Placement
from migd.formats.gpu_models import load_model

H200 = blank_gpu(load_model("H200"), index=0, mig_enabled=True)
PROFILE = {p.name: p for p in H200.profiles}


def gi(gi_id: int, name: str, start: int, size: int = 1) -> GpuInstance:
    profile = PROFILE[name]
    full = profile.full_ci()
    assert full is not None
    ci = ComputeInstance(0, full.id, Placement(0, profile.slice_count))
    return GpuInstance(gi_id, profile.id, Placement(start, size), (ci,))


def holding(*instances: GpuInstance, mig: bool = True) -> GpuState:
    return replace(H200, instances=instances, mig_enabled=mig, mig_pending=mig)


def test_instances_that_appeared_and_disappeared_are_named_with_their_placement() -> None:
    before = holding(gi(2, "3g.71gb", 4, 4), gi(9, "1g.18gb", 2), gi(10, "1g.18gb", 3))
    after = holding(gi(9, "1g.18gb", 2), gi(10, "1g.18gb", 3), gi(11, "2g.35gb", 4, 2))
    assert gpu_changes(before, after) == (
        "GI 2 (3g.71gb at 4:4) disappeared",
        "GI 11 (2g.35gb at 4:2) appeared",
    )


def test_a_mode_change_and_a_pending_one_are_named() -> None:
    assert gpu_changes(holding(), holding(mig=False)) == (
        "MIG mode changed from enabled to disabled",
    )
    pending = replace(holding(mig=False), mig_pending=True)
    assert gpu_changes(holding(mig=False), pending) == ("MIG mode change to enabled pending",)


def test_nothing_changed_or_nothing_readable_says_nothing() -> None:
    same = holding(gi(2, "3g.71gb", 4, 4))
    assert gpu_changes(same, same) == ()
    lost = replace(H200, error="GPU_IS_LOST")
    assert gpu_changes(same, lost) == ()
