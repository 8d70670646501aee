"""A GPU's exact geometry: what a checkpoint records, captured from a snapshot.

Per GPU, the MIG mode and every GPU instance with its profile id, its placement and
its compute instances (profile id and placement), so the geometry can be recreated
exactly with explicit placements. The executor captures one before it touches a GPU
(to put a failed GPU back), ``migd checkpoint`` saves them and ``migd restore`` plans
towards them (``migd.core.planner``). The file format is ``migd.formats.checkpoint_file``.
Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from migd.core.layout import GpuInstance, GpuState, NodeSnapshot, Placement


@dataclass(frozen=True, order=True)
class CiRecord:
    profile_id: int
    placement: Placement
    profile: str = field(default="", compare=False)


@dataclass(frozen=True, order=True)
class GiRecord:
    profile_id: int
    placement: Placement
    compute_instances: tuple[CiRecord, ...] = ()
    profile: str = field(default="", compare=False)


@dataclass(frozen=True)
class GpuRecord:
    """One GPU's geometry. ``instances`` is sorted so equal geometries compare equal."""

    index: int
    uuid: str
    mig_enabled: bool
    instances: tuple[GiRecord, ...] = ()
    bus_id: str = field(default="", compare=False)


@dataclass(frozen=True)
class Checkpoint:
    gpus: tuple[GpuRecord, ...]
    driver_version: str = ""

    def by_uuid(self, uuid: str) -> GpuRecord | None:
        return next((g for g in self.gpus if g.uuid == uuid), None)


# ---------------------------------------------------------------------------
# Capture and compare
# ---------------------------------------------------------------------------


def _ci_name(gpu: GpuState, gi: GpuInstance, ci_profile_id: int) -> str:
    profile = gpu.profile_by_id(gi.profile_id)
    ci = profile.ci_profile(ci_profile_id) if profile is not None else None
    return ci.name if ci is not None else ""


def capture_gpu(gpu: GpuState) -> GpuRecord:
    """The exact geometry of one GPU as read."""
    instances = []
    for gi in gpu.instances:
        profile = gpu.profile_by_id(gi.profile_id)
        cis = tuple(
            sorted(
                CiRecord(ci.profile_id, ci.placement, _ci_name(gpu, gi, ci.profile_id))
                for ci in gi.compute_instances
            )
        )
        instances.append(
            GiRecord(gi.profile_id, gi.placement, cis, profile.name if profile else "")
        )
    return GpuRecord(
        index=gpu.index,
        uuid=gpu.uuid,
        mig_enabled=gpu.mig_enabled,
        instances=tuple(sorted(instances)),
        bus_id=gpu.bus_id,
    )


def capture(snapshot: NodeSnapshot) -> Checkpoint:
    """The geometry of every MIG-capable GPU of the node."""
    return Checkpoint(
        gpus=tuple(capture_gpu(g) for g in snapshot.gpus if g.mig_capable),
        driver_version=snapshot.driver_version,
    )


def gpu_matches(gpu: GpuState, record: GpuRecord) -> bool:
    """Whether a GPU holds exactly the recorded geometry (mode, placements, CIs)."""
    return capture_gpu(gpu) == record
