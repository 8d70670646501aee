"""mig-parted's checkpoint, read as a migd checkpoint of the node it is restored on.

``nvidia-mig-parted checkpoint`` records, per MIG-capable GPU, its UUID and MIG mode
and each GPU instance's profile *index* (``NVML_GPU_INSTANCE_PROFILE_*``) and
placement, with its compute instances' profile and engine-profile indices but no
placement (mig-parted creates them where the driver puts them). A migd checkpoint
holds NVML profile ids and every placement, so reading one needs the GPU's own profile
tables: :func:`resolve` takes them from a snapshot of the node. Compute instances get
the placements the GPU holds them at when its GPU instance is already as recorded,
else a placement :func:`migd.core.placement.place_cis` finds. Pure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from migd.core.checkpoint import Checkpoint, CiRecord, GiRecord, GpuRecord
from migd.core.layout import DesiredGpu, GiProfile, GpuState, NodeSnapshot, Placement
from migd.core.placement import place_cis
from migd.errors import InvalidRequest

# NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED: the only engine profile NVML defines.
ENGINE_PROFILE_SHARED = 0


@dataclass(frozen=True)
class PartedCi:
    profile_index: int
    engine_profile: int = ENGINE_PROFILE_SHARED


@dataclass(frozen=True)
class PartedGi:
    profile_index: int
    placement: Placement
    compute_instances: tuple[PartedCi, ...] = ()


@dataclass(frozen=True)
class PartedGpu:
    uuid: str
    mig_enabled: bool
    instances: tuple[PartedGi, ...] = ()


@dataclass(frozen=True)
class PartedCheckpoint:
    """A checkpoint as ``nvidia-mig-parted checkpoint`` wrote it (``api/checkpoint/v1``)."""

    gpus: tuple[PartedGpu, ...]


def _gpu(snapshot: NodeSnapshot, uuid: str) -> GpuState:
    gpu = next((g for g in snapshot.gpus if g.uuid == uuid), None)
    if gpu is None:
        raise InvalidRequest(f"the checkpoint names a GPU this node does not have: {uuid}")
    return gpu


def _gi_profile(gpu: GpuState, index: int) -> GiProfile:
    profile = next((p for p in gpu.profiles if p.index == index), None)
    if profile is None:
        raise InvalidRequest(
            f"GPU {gpu.index} ({gpu.uuid}) has no GPU instance profile index {index}, "
            "which the checkpoint records"
        )
    return profile


def _ci_records(gpu: GpuState, profile: GiProfile, gi: PartedGi) -> tuple[CiRecord, ...]:
    ids: list[int] = []
    for ci in gi.compute_instances:
        offered = next((c for c in profile.ci_profiles if c.index == ci.profile_index), None)
        if ci.engine_profile != ENGINE_PROFILE_SHARED or offered is None:
            raise InvalidRequest(
                f"GPU {gpu.index}: {profile.name} offers no compute instance profile index "
                f"{ci.profile_index} with engine profile {ci.engine_profile}"
            )
        ids.append(offered.id)
    names = {c.id: c.name for c in profile.ci_profiles}
    held = next(
        (i for i in gpu.instances if i.profile_id == profile.id and i.placement == gi.placement),
        None,
    )
    if held is not None and Counter(c.profile_id for c in held.compute_instances) == Counter(ids):
        placed = [(c.profile_id, c.placement) for c in held.compute_instances]
    else:
        creates = place_cis(profile, ids)
        if creates is None:
            raise InvalidRequest(
                f"GPU {gpu.index}: the compute instances recorded for {profile.name} at "
                f"{gi.placement} do not fit it"
            )
        placed = [(c.profile_id, c.placement) for c in creates]
    return tuple(sorted(CiRecord(i, p, names.get(i, "")) for i, p in placed))


def resolve(saved: PartedCheckpoint, snapshot: NodeSnapshot) -> Checkpoint:
    """``saved`` in migd's terms on the node in ``snapshot``; InvalidRequest if it cannot be."""
    gpus = []
    for record in saved.gpus:
        gpu = _gpu(snapshot, record.uuid)
        instances = []
        for gi in record.instances if record.mig_enabled else ():
            profile = _gi_profile(gpu, gi.profile_index)
            cis = _ci_records(gpu, profile, gi)
            instances.append(GiRecord(profile.id, gi.placement, cis, profile.name))
        gpus.append(
            GpuRecord(
                index=gpu.index,
                uuid=gpu.uuid,
                mig_enabled=record.mig_enabled,
                instances=tuple(sorted(instances)),
                bus_id=gpu.bus_id,
            )
        )
    return Checkpoint(gpus=tuple(gpus), driver_version=snapshot.driver_version)


def recorded_modes(saved: Checkpoint, snapshot: NodeSnapshot) -> tuple[DesiredGpu, ...]:
    """The MIG mode each recorded GPU should have: what ``restore --mode-only`` brings back."""
    by_uuid = {g.uuid: g for g in snapshot.gpus}
    missing = [r.uuid for r in saved.gpus if r.uuid not in by_uuid]
    if missing:
        raise InvalidRequest(
            f"the checkpoint names GPUs this node does not have: {', '.join(missing)}"
        )
    return tuple(DesiredGpu(by_uuid[r.uuid].index, r.mig_enabled) for r in saved.gpus)
