"""A simulated GPU model as the value types the planner works on.

Pure conversions from :mod:`migd.sim.models` (what NVML reports, as data) to
:mod:`migd.core.layout` (what migd reads from NVML): the same profile table the NVML
adapter builds from a real GPU, without going through NVML. Tests of selection and
planning use them to get any model's table in one call.
"""

from __future__ import annotations

from collections.abc import Iterable

from migd.core.layout import (
    CiProfile,
    GiProfile,
    GpuState,
    Placement,
    ProfileName,
    ProfileNameError,
)
from migd.sim.models import CiModel, GiModel, GpuModel

_PREFIX = "MIG "


def _short(name: str) -> str:
    """The name without the driver's ``MIG `` prefix, as the GPU reports it."""
    return name.removeprefix(_PREFIX)


def _canonical(name: str) -> str:
    """CI names are compared canonically (``1c.1g.18gb`` is ``1g.18gb``); keep odd ones as is."""
    try:
        return str(ProfileName.parse(name))
    except ProfileNameError:
        return name


def _placements(spans: Iterable[tuple[int, int]]) -> tuple[Placement, ...]:
    return tuple(Placement(start, size) for start, size in spans)


def ci_profile_of(ci: CiModel) -> CiProfile:
    """One CI profile row as migd sees it."""
    return CiProfile(
        index=ci.index,
        id=ci.id,
        name=_canonical(_short(ci.name)),
        slice_count=ci.slice_count,
        instance_count=ci.instance_count,
        multiprocessor_count=ci.multiprocessor_count,
        placements=_placements(ci.placements),
    )


def gi_profile_of(gi: GiModel) -> GiProfile:
    """One GI profile row, with the CI profiles it offers, as migd sees it."""
    return GiProfile(
        index=gi.index,
        id=gi.id,
        name=_short(gi.name),
        slice_count=gi.slice_count,
        instance_count=gi.instance_count,
        memory_mb=gi.memory_size_mb,
        multiprocessor_count=gi.multiprocessor_count,
        placements=_placements(gi.placements),
        ci_profiles=tuple(ci_profile_of(ci) for ci in gi.compute_instances),
    )


def profile_table(model: GpuModel) -> tuple[GiProfile, ...]:
    """The GI profile table of ``model`` (empty for a GPU without MIG)."""
    return tuple(gi_profile_of(gi) for gi in model.gi_profiles)


def blank_gpu(model: GpuModel, index: int = 0, mig_enabled: bool = True) -> GpuState:
    """A GPU of ``model`` holding no instances, MIG on or off (never on without MIG).

    UUID and bus id are made up from the index, so GPUs of one test node differ.
    """
    enabled = mig_enabled and model.mig_capable
    return GpuState(
        index=index,
        uuid=f"GPU-{model.pci_device_id:08x}-0000-4000-8000-{index:012x}",
        name=model.name,
        pci_device_id=model.pci_device_id,
        pci_subsystem_id=model.pci_subsystem_id,
        bus_id=f"00000000:{0x17 + index:02X}:00.0",
        memory_total_bytes=model.memory_total_bytes,
        mig_capable=model.mig_capable,
        mig_enabled=enabled,
        mig_pending=enabled,
        profiles=profile_table(model),
        instances=(),
        slot_count=model.slot_count,
    )
