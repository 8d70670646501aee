"""What a GPU offers, holds and should hold: the values every part of migd shares.

Everything here is a frozen dataclass over plain values: no NVML, no I/O.

Names (DESIGN.md): a *layout* is what one GPU should hold; a *profile* is a
GPU-instance profile named as the GPU reports it (``1g.18gb``, ``1g.18gb+me``);
``1c.2g.35gb`` names a compute instance inside a ``2g.35gb`` GPU instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from migd.core.profiles import ProfileName

# ---------------------------------------------------------------------------
# What a GPU offers (its profile table)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Placement:
    """A span ``[start, start+size)`` on a GPU's memory-slice axis (or a GI's compute axis)."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def overlaps(self, other: Placement) -> bool:
        return self.start < other.end and other.start < self.end

    def __str__(self) -> str:
        return f"{self.start}:{self.size}"


@dataclass(frozen=True)
class CiProfile:
    """A compute-instance profile offered inside one GPU-instance profile.

    ``name`` is canonical (``1c.2g.35gb``, or the GI's name for a CI spanning it).
    """

    index: int
    id: int
    name: str
    slice_count: int
    instance_count: int
    multiprocessor_count: int
    placements: tuple[Placement, ...]


@dataclass(frozen=True)
class GiProfile:
    """A GPU-instance profile as this GPU reports it.

    ``index`` is the NVML_GPU_INSTANCE_PROFILE_* constant; ``id`` is ``info.id``,
    the value every other NVML call takes. ``name`` is the short name the GPU
    reports (``1g.18gb+me``), without the ``MIG `` prefix.
    """

    index: int
    id: int
    name: str
    slice_count: int
    instance_count: int
    memory_mb: int
    multiprocessor_count: int
    placements: tuple[Placement, ...]
    ci_profiles: tuple[CiProfile, ...] = ()

    @property
    def parsed(self) -> ProfileName:
        return ProfileName.parse(self.name)

    def ci_profile(self, ci_id: int) -> CiProfile | None:
        """The CI profile with id ``ci_id`` this GI profile offers, if any."""
        return next((ci for ci in self.ci_profiles if ci.id == ci_id), None)

    def full_ci(self) -> CiProfile | None:
        """The compute-instance profile that spans this whole GI (the one ``-C`` creates).

        Several CI profiles can carry the GI's name: the Hopper double-memory 1g GI
        offers a plain 1c (16 SMs) besides its own full CI (26 SMs), both named
        ``1g.35gb``. The full one reports the GI's own SM count.
        """
        named = [ci for ci in self.ci_profiles if ci.name == self.name]
        for ci in named:
            if ci.multiprocessor_count == self.multiprocessor_count:
                return ci
        return named[0] if named else None


# ---------------------------------------------------------------------------
# What a GPU holds (observed state)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ComputeInstance:
    id: int
    profile_id: int
    placement: Placement
    pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GpuInstance:
    """An existing GI with its CIs. ``pids`` holds every process running inside it."""

    id: int
    profile_id: int
    placement: Placement
    compute_instances: tuple[ComputeInstance, ...] = ()
    pids: tuple[int, ...] = ()

    @property
    def busy(self) -> bool:
        return bool(self.pids) or any(ci.pids for ci in self.compute_instances)


@dataclass(frozen=True)
class GpuState:
    """One GPU as read from NVML at one moment."""

    index: int
    uuid: str
    name: str
    pci_device_id: int  # (device << 16) | vendor, e.g. 0x233510DE
    pci_subsystem_id: int
    bus_id: str
    memory_total_bytes: int
    mig_capable: bool
    mig_enabled: bool  # current mode
    mig_pending: bool  # pending mode (differs from current until a reset on Ampere)
    profiles: tuple[GiProfile, ...] = ()
    instances: tuple[GpuInstance, ...] = ()
    slot_count: int = 8  # units of the placement axis (8, 4 on A30, 12 on RTX PRO 6000)
    # Set when NVML failed while reading this GPU (GPU_IS_LOST): the GPU is listed so
    # one bad GPU does not hide the others, but nothing above the index (and whatever
    # identity was read earlier) is known, so nothing may be planned on it.
    error: str | None = None  # the NVML error name
    error_call: str = ""  # the NVML call that answered it

    @property
    def readable(self) -> bool:
        return self.error is None

    @property
    def unreadable_reason(self) -> str:
        """``unreadable: GPU_IS_LOST (nvmlDeviceGetHandleByIndex)``; empty when readable."""
        if self.error is None:
            return ""
        call = f" ({self.error_call})" if self.error_call else ""
        return f"unreadable: {self.error}{call}"

    @property
    def device_filter(self) -> str:
        return f"0x{self.pci_device_id:08X}"

    @property
    def mode_change_pending(self) -> bool:
        return self.mig_enabled != self.mig_pending

    def profile_by_id(self, profile_id: int) -> GiProfile | None:
        for p in self.profiles:
            if p.id == profile_id:
                return p
        return None


@dataclass(frozen=True)
class NodeSnapshot:
    gpus: tuple[GpuState, ...]
    driver_version: str = ""
    nvml_version: str = ""

    def gpu(self, index: int) -> GpuState:
        for g in self.gpus:
            if g.index == index:
                return g
        raise KeyError(index)


# ---------------------------------------------------------------------------
# What a GPU should hold (desired layout, resolved against its own table)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class GiSpec:
    """One wanted GPU instance: its GI profile id and the CI profile ids inside it (sorted)."""

    profile_id: int
    ci_profile_ids: tuple[int, ...]


@dataclass(frozen=True)
class DesiredGpu:
    """The resolved layout for one GPU. ``instances`` is sorted, so equal layouts compare equal.

    ``source`` holds the config's profile counts as written (for messages and metrics).
    """

    index: int
    mig_enabled: bool
    instances: tuple[GiSpec, ...] = ()
    source: tuple[tuple[str, int], ...] = field(default=(), compare=False)


def gi_spec(instance: GpuInstance) -> GiSpec:
    """The spec an existing GI satisfies: its profile and the sorted ids of its CI profiles."""
    return GiSpec(
        instance.profile_id, tuple(sorted(ci.profile_id for ci in instance.compute_instances))
    )
