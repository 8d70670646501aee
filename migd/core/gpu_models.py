"""GPU models as data: what NVML reports about each GPU model migd knows.

Per model: the device basics, every GPU-instance (GI) profile with its possible
placements and the order the driver tries them when no placement is given, the
compute-instance (CI) profiles each GI offers, and the NVML answer for every profile
index the GPU does not support. The tables ship with migd, one file per model
(``migd.formats.gpu_models`` reads them), and serve two users: ``migd validate
--gpu-model`` checks a config against a model's own table without any GPU, and the
simulator (``migd.sim``) pretends to be such a GPU.

:func:`blank_gpu` turns a model into the value the planner works on (the same profile
table the NVML adapter builds from a real GPU), so selection and planning can be
judged on any model in one call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from migd.core import nvml_codes
from migd.core.layout import CiProfile, GiProfile, GpuState, Placement
from migd.core.profiles import (
    DRIVER_NAME_PREFIX,
    GI_INDEX_SLICES,
    GI_INDEX_SUFFIX,
    canonical_or_raw,
    short_name,
)

_MIB = 1 << 20
_GIB = 1 << 30

# ---------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CiModel:
    """One compute-instance profile a GI offers (``nvmlComputeInstanceProfileInfo_v2_t``)."""

    index: int  # NVML_COMPUTE_INSTANCE_PROFILE_* constant
    id: int  # info.id
    name: str  # as the driver reports it: "MIG 1c.3g.71gb", or the GI name for a full CI
    slice_count: int
    instance_count: int
    multiprocessor_count: int
    shared_copy_engine_count: int
    shared_decoder_count: int
    shared_encoder_count: int
    shared_jpeg_count: int
    shared_ofa_count: int
    placements: tuple[tuple[int, int], ...]  # (start, size) on the GI-local compute axis
    default: bool  # the '*' row: what a CI create without a profile choice ('-C') makes

    @property
    def short_name(self) -> str:
        """The name without the driver's "MIG " prefix (``1c.3g.71gb``)."""
        return short_name(self.name)


@dataclasses.dataclass(frozen=True)
class GiModel:
    """One GPU-instance profile (``nvmlGpuInstanceProfileInfo_v2_t`` plus placements)."""

    index: int  # NVML_GPU_INSTANCE_PROFILE_* constant
    id: int  # info.id
    name: str  # "MIG 1g.18gb", "MIG 1g.18gb+me"
    slice_count: int
    instance_count: int
    multiprocessor_count: int
    copy_engine_count: int
    decoder_count: int
    encoder_count: int
    jpeg_count: int
    ofa_count: int
    memory_size_mb: int
    is_p2p_supported: int
    placements: tuple[tuple[int, int], ...]  # (start, size) on the memory-slice axis
    default_order: tuple[int, ...]  # starts the driver tries, in order, without a placement
    compute_instances: tuple[CiModel, ...]

    @property
    def short_name(self) -> str:
        """The name without the driver's "MIG " prefix (``1g.18gb+me``)."""
        return short_name(self.name)

    def ci_by_index(self, index: int) -> CiModel | None:
        """The CI profile with this NVML_COMPUTE_INSTANCE_PROFILE_* index, if offered."""
        return next((ci for ci in self.compute_instances if ci.index == index), None)

    def ci_by_id(self, profile_id: int) -> CiModel | None:
        """The CI profile with this info.id, if offered."""
        return next((ci for ci in self.compute_instances if ci.id == profile_id), None)


@dataclasses.dataclass(frozen=True)
class GpuModel:
    """Everything NVML reports about one GPU model that the simulator needs."""

    key: str  # "H200-SXM-141GB"
    aliases: tuple[str, ...]  # ("H200",)
    name: str  # nvmlDeviceGetName: "NVIDIA H200"
    pci_device_id: int  # (device << 16) | vendor: 0x233510DE
    pci_subsystem_id: int
    memory_total_bytes: int
    architecture: int  # NVML_DEVICE_ARCH_*: AMPERE 7, ADA 8, HOPPER 9, BLACKWELL 10
    mig_capable: bool
    mode_change_needs_reset: bool  # Ampere: True; Hopper and later: False
    slot_count: int  # placement-axis units: 8, 4 (A30), 12 (RTX PRO 6000)
    compute_slices: int
    max_gpu_instances: int
    gi_profiles: tuple[GiModel, ...]
    profile_index_errors: tuple[tuple[int, int], ...]  # (GI profile index, NVML return code)
    synthesized: tuple[str, ...]  # dotted paths of figures no source confirmed

    def gi_by_index(self, index: int) -> GiModel | None:
        """The GI profile with this NVML_GPU_INSTANCE_PROFILE_* index, if supported."""
        return next((gi for gi in self.gi_profiles if gi.index == index), None)

    def gi_by_id(self, profile_id: int) -> GiModel | None:
        """The GI profile with this info.id, if supported."""
        return next((gi for gi in self.gi_profiles if gi.id == profile_id), None)

    def profile_index_error(self, index: int) -> int | None:
        """The NVML return code a GI profile query for ``index`` fails with, or None.

        Indices the file lists give their code; a GPU without MIG refuses every index
        with NOT_SUPPORTED; any other index lies past the driver's table and gets
        INVALID_ARGUMENT (as the H200 answers for 17 and 18).
        """
        if self.gi_by_index(index) is not None:
            return None
        for listed, code in self.profile_index_errors:
            if listed == index:
                return code
        if not self.mig_capable:
            return nvml_codes.NOT_SUPPORTED
        return nvml_codes.INVALID_ARGUMENT


# ---------------------------------------------------------------------------
# Naming
# ---------------------------------------------------------------------------


def mig_memory_gb(memory_size_mb: int, memory_total_bytes: int) -> int:
    """The GB figure NVIDIA tooling puts in a profile name (go-nvlib ``getMigMemorySizeGB``).

    ``round_half_up(ceil(8 * memorySizeMB * 2**20 / total) / 8 * ceil(total / 2**30))``,
    in exact integers: Python's ``round()`` rounds half to even and would name the
    H200's 3g profile ``3g.70gb`` instead of the ``3g.71gb`` it reports.
    """
    eighths = -(-8 * memory_size_mb * _MIB // memory_total_bytes)  # ceil
    total_gb = -(-memory_total_bytes // _GIB)  # ceil
    return (2 * eighths * total_gb + 8) // 16  # round half up of eighths * total_gb / 8


def gi_profile_name(index: int, memory_size_mb: int, memory_total_bytes: int) -> str:
    """The driver name of a GI profile: ``MIG <g>g.<GB>gb<suffix>``."""
    gb = mig_memory_gb(memory_size_mb, memory_total_bytes)
    return f"{DRIVER_NAME_PREFIX}{GI_INDEX_SLICES[index]}g.{gb}gb{GI_INDEX_SUFFIX.get(index, '')}"


def ci_profile_name(ci_slices: int, gi: GiModel) -> str:
    """The driver name of a CI profile: ``MIG <c>c.<GI short name>``, or the GI name if c == g."""
    if ci_slices == gi.slice_count:
        return gi.name
    return f"{DRIVER_NAME_PREFIX}{ci_slices}c.{gi.short_name}"


# ---------------------------------------------------------------------------
# As migd sees such a GPU
# ---------------------------------------------------------------------------


def _placements(spans: Iterable[tuple[int, int]]) -> tuple[Placement, ...]:
    return tuple(Placement(start, size) for start, size in spans)


def ci_profile_of(ci: CiModel) -> CiProfile:
    """One CI profile row as migd sees it."""
    return CiProfile(
        index=ci.index,
        id=ci.id,
        name=canonical_or_raw(short_name(ci.name)),
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
        name=short_name(gi.name),
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
