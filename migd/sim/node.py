"""What the simulated driver does to a node: pure functions from state values to state values.

Nothing here touches ctypes, files or pynvml. A function that the driver would refuse
raises :class:`NvmlFailure` carrying the NVML return code; a node-level operation that
has no NVML call (reset, processes) raises a :class:`migd.errors.MigdError`.

The rules (reference/nvml.md, "Semantics a simulator must reproduce"):

- GPU instances (GIs) live on the memory-slice axis, ``[start, start+size)``. A create
  over an occupied slot, past the profile's ``instanceCount``, past the GPU's compute
  slices or past its GI limit fails with INSUFFICIENT_RESOURCES; a placement that is not
  one of the profile's possible placements is INVALID_ARGUMENT.
- Media engines: at most one ``+me`` GI per GPU; an ``+me.all`` GI excludes every GI
  but ``-me`` ones (nvml.h, NVML_GPU_INSTANCE_PROFILE_*_ALL_ME).
- A GI's id is its hardware partition index (:func:`gi_partition_id`).
- Without a placement the driver tries the model's ``default_order`` of starts.
- Compute instances (CIs) live on their GI's local compute axis with the same overlap
  rule, and share the GI's compute slices; a CI's id is the lowest free one (0..7).
  Without a placement, Ampere takes the first free start; Hopper and later the free
  start that leaves the most remaining capacity, ties to the lowest (RM's
  ``kmigmgrGetFreeCTSId``; ci-profiles.yaml).
- Teardown: a GI with CIs or processes, a CI with processes -> IN_USE; MIG cannot be
  disabled while GIs exist (IN_USE).
- Mode changes: on Ampere the driver must reset the GPU, which a client (a system
  client, or a process) prevents: the change stays pending, activationStatus IN_USE;
  under VM passthrough a reset is impossible (RESET_REQUIRED). Hopper and later apply
  at once unless processes run on the GPU. A reset applies the pending mode and
  destroys every instance.

Choices where no readout settles the answer (each follows nvml.h):

- Creating a GI while MIG is disabled (or only pending): NOT_SUPPORTED, which nvml.h
  lists "if device doesn't have MIG mode enabled" (not INVALID_STATE).
- A GI profile id the GPU does not have: INVALID_ARGUMENT; a CI profile id below
  NVML_COMPUTE_INSTANCE_PROFILE_COUNT that the GI does not offer: NOT_SUPPORTED.
- Disabling MIG while GIs exist fails the call itself with IN_USE (nothing becomes
  pending); a busy GPU makes a mode change pending with activationStatus IN_USE.
- VM passthrough blocks only the Ampere mode change (which needs a reset): the real
  H200 read in a passthrough VM reports resetless MIG support.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Sequence

from migd.core import nvml_codes
from migd.core.gpu_models import CiModel, GiModel, GpuModel
from migd.core.profiles import CI_PROFILE_INDEX_COUNT, gi_indices_with_suffix
from migd.errors import InvalidRequest, MigdError
from migd.formats.gpu_models import load_model
from migd.sim.state import ComputeInstance, Flags, Gpu, GpuInstance, NodeState, Process

NVML_DEVICE_ARCH_HOPPER = 9
MAX_CIS_PER_GI = 8  # GPUMGR_MAX_COMPUTE_INSTANCES

# NVML_GPU_INSTANCE_PROFILE_* indices by media-engine class.
_ME_INDICES = gi_indices_with_suffix("+me")  # *_REV1
_ALL_ME_INDICES = gi_indices_with_suffix("+me.all")  # *_ALL_ME
_NO_ME_INDICES = gi_indices_with_suffix("-me")  # *_NO_ME

# PCI buses of the eight GPUs of a DGX H100; a ninth GPU and on continue in the next
# PCI domain with the same buses (as multi-domain hosts number them).
DGX_BUS_NUMBERS = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)

_UUID_NAMESPACE = uuid.UUID("6f0c6f1e-4d69-4764-9b5e-73696d6e766d")

# A (start, size) span on a placement axis, as the model tables write placements.
Span = tuple[int, int]


class NvmlFailure(Exception):
    """The simulated driver refuses a call with NVML return ``code``."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(
            f"{nvml_codes.code_name(code)}: {reason}" if reason else nvml_codes.code_name(code)
        )


class ResetRefused(MigdError):
    """A GPU reset cannot happen (passthrough, processes, a lost GPU); nothing changed."""


# ---------------------------------------------------------------------------
# A fresh node
# ---------------------------------------------------------------------------


def bus_id(index: int) -> str:
    """The PCI bus id of GPU ``index``: ``00000000:18:00.0`` ... like a DGX H100."""
    domain, slot = divmod(index, len(DGX_BUS_NUMBERS))
    return f"{domain:08X}:{DGX_BUS_NUMBERS[slot]:02X}:00.0"


def gpu_uuid(seed: str, index: int) -> str:
    """A deterministic ``GPU-…`` UUID for GPU ``index`` of the node named ``seed``."""
    return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{seed}/{index}')}"


def mig_uuid(gpu: Gpu, gi: GpuInstance, ci: ComputeInstance) -> str:
    """The ``MIG-…`` UUID of the MIG device of ``ci``; a recreated CI gets a new one."""
    return f"MIG-{uuid.uuid5(_UUID_NAMESPACE, f'{gpu.uuid}/{gi.serial}/{ci.serial}')}"


def new_node(model_keys: Sequence[str], seed: str, flags: Flags) -> NodeState:
    """A node as it boots: one GPU per model key, MIG disabled, no instances."""
    return NodeState(
        gpus=tuple(
            Gpu(index=i, model=key, uuid=gpu_uuid(seed, i), bus_id=bus_id(i))
            for i, key in enumerate(model_keys)
        ),
        flags=flags,
    )


# ---------------------------------------------------------------------------
# Lookups
# ---------------------------------------------------------------------------


def parse_bus_id(text: str) -> tuple[int, int, int] | None:
    """(domain, bus, device) of a PCI bus id ``[domain:]bus:device[.function]`` (hex),
    in any of the forms NVML and nvidia-smi accept; None if it is not one."""
    parts = text.strip().split(":")
    if len(parts) == 2:
        parts = ["0", *parts]
    if len(parts) != 3:
        return None
    try:
        return int(parts[0], 16), int(parts[1], 16), int(parts[2].split(".")[0], 16)
    except ValueError:
        return None


def find_gpu_by_bus_id(node: NodeState, text: str) -> Gpu | None:
    wanted = parse_bus_id(text)
    if wanted is None:
        return None
    return next((g for g in node.gpus if parse_bus_id(g.bus_id) == wanted), None)


def model_of(gpu: Gpu) -> GpuModel:
    return load_model(gpu.model)


def find_gi(gpu: Gpu, serial: int) -> GpuInstance | None:
    return next((gi for gi in gpu.gpu_instances if gi.serial == serial), None)


def find_gi_by_id(gpu: Gpu, gi_id: int) -> GpuInstance | None:
    return next((gi for gi in gpu.gpu_instances if gi.id == gi_id), None)


def find_ci(gpu: Gpu, serial: int) -> tuple[GpuInstance, ComputeInstance] | None:
    for gi in gpu.gpu_instances:
        for ci in gi.compute_instances:
            if ci.serial == serial:
                return gi, ci
    return None


def gi_model_of(model: GpuModel, gi: GpuInstance) -> GiModel:
    found = model.gi_by_id(gi.profile_id)
    if found is None:  # only a hand-edited STATE can get here
        raise MigdError(f"GPU instance {gi.id} has profile {gi.profile_id}, unknown to {model.key}")
    return found


def mig_devices(gpu: Gpu) -> list[tuple[GpuInstance, ComputeInstance]]:
    """The MIG devices of ``gpu`` (one per CI) in NVML's index order: GI id, then CI id."""
    if gpu.mig_current != 1:
        return []
    return sorted(
        ((gi, ci) for gi in gpu.gpu_instances for ci in gi.compute_instances),
        key=lambda pair: (pair[0].id, pair[1].id),
    )


def processes_on(
    node: NodeState, gpu_index: int, gi_id: int | None = None, ci_id: int | None = None
) -> list[Process]:
    """Processes on a GPU, or on one GI of it, or on one CI of that GI."""
    return [
        p
        for p in node.processes
        if p.gpu == gpu_index
        and (gi_id is None or p.gi == gi_id)
        and (ci_id is None or p.ci == ci_id)
    ]


def replace_gpu(node: NodeState, gpu: Gpu) -> NodeState:
    return dataclasses.replace(
        node, gpus=tuple(gpu if g.index == gpu.index else g for g in node.gpus)
    )


def _replace_gi(node: NodeState, gpu: Gpu, gi: GpuInstance) -> NodeState:
    """``node`` with ``gi`` in place of the GPU instance of ``gpu`` with its serial."""
    return replace_gpu(
        node,
        dataclasses.replace(
            gpu, gpu_instances=tuple(gi if g.serial == gi.serial else g for g in gpu.gpu_instances)
        ),
    )


def _gpu(node: NodeState, index: int) -> Gpu:
    if not 0 <= index < len(node.gpus):
        raise NvmlFailure(nvml_codes.INVALID_ARGUMENT, f"no GPU {index}")
    return node.gpus[index]


def _require_mig_capable(model: GpuModel) -> None:
    if not model.mig_capable:
        raise NvmlFailure(nvml_codes.NOT_SUPPORTED, f"{model.name} has no MIG")


def _require_root(node: NodeState) -> None:
    if not node.flags.root:
        raise NvmlFailure(nvml_codes.NO_PERMISSION, "the caller is not root")


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


def overlaps(a: Span, b: Span) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def max_disjoint(placements: Iterable[Span]) -> int:
    """How many of ``placements`` fit at once (greedy by end: optimal for intervals)."""
    count, end = 0, -1
    for start, size in sorted(placements, key=lambda p: (p[0] + p[1], p[0])):
        if start >= end:
            count, end = count + 1, start + size
    return count


def gi_partition_id(slot_count: int, start: int, size: int) -> int | None:
    """The hardware partition index of a GI at ``start:size``: the id NVML gives it.

    The axis is a binary tree of partitions numbered breadth-first: the whole GPU 0,
    halves 1-2, quarters 3-6, eighths 7-14. A GI of ``size`` units sits at depth
    ``log2(slot_count / size)`` and is the ``start / size``-th node there. On an 8-slot
    GPU: 7g -> 0; 3g/4g at 0, 4 -> 1, 2; 2g and 1g-double at 0, 2, 4, 6 -> 3..6; 1g at
    slot k -> 7+k. The same rule gives the A30 (4 units) and the RTX PRO 6000 (12 units:
    halves of 6, quarters of 3) the ids observed on them. None where the placement is not
    a node of the tree.
    """
    if size <= 0 or slot_count % size or start % size:
        return None
    ratio = slot_count // size
    if ratio & (ratio - 1):  # not a power of two
        return None
    return ratio - 1 + start // size


def _media_conflict(existing: Iterable[GiModel], new: GiModel) -> bool:
    present = [g.index for g in existing]
    if any(i in _ALL_ME_INDICES for i in present) and new.index not in _NO_ME_INDICES:
        return True
    if new.index in _ALL_ME_INDICES and any(i not in _NO_ME_INDICES for i in present):
        return True
    media = _ME_INDICES | _ALL_ME_INDICES
    return new.index in media and any(i in media for i in present)


# ---------------------------------------------------------------------------
# GPU instances
# ---------------------------------------------------------------------------


def _gi_room(model: GpuModel, gpu: Gpu, gi_model: GiModel) -> int:
    """How many more GIs of ``gi_model`` the GPU's counters allow, placements aside."""
    existing = [gi_model_of(model, gi) for gi in gpu.gpu_instances]
    if _media_conflict(existing, gi_model):
        return 0
    used_slices = sum(g.slice_count for g in existing)
    return max(
        0,
        min(
            gi_model.instance_count - sum(1 for g in existing if g.id == gi_model.id),
            model.max_gpu_instances - len(existing),
            (model.compute_slices - used_slices) // gi_model.slice_count,
        ),
    )


def _gi_free(gpu: Gpu, placement: Span) -> bool:
    return not any(overlaps(placement, (gi.start, gi.size)) for gi in gpu.gpu_instances)


def gi_remaining_capacity(model: GpuModel, gpu: Gpu, gi_model: GiModel) -> int:
    """``nvmlDeviceGetGpuInstanceRemainingCapacity``: placements that overlap nothing,
    capped by instanceCount, compute slices, the GI limit and the media-engine rule.

    With MIG disabled there are no instances, so this is the empty GPU's capacity (as
    the real H200 answers).
    """
    free = [p for p in gi_model.placements if _gi_free(gpu, p)]
    return min(_gi_room(model, gpu, gi_model), max_disjoint(free))


def create_gpu_instance(
    node: NodeState, gpu_index: int, profile_id: int, placement: Span | None
) -> tuple[NodeState, GpuInstance]:
    """``nvmlDeviceCreateGpuInstance[WithPlacement]``: the node with a new GI, and the GI."""
    gpu = _gpu(node, gpu_index)
    model = model_of(gpu)
    _require_mig_capable(model)
    gi_model = model.gi_by_id(profile_id)
    if gi_model is None:
        raise NvmlFailure(nvml_codes.INVALID_ARGUMENT, f"no GI profile id {profile_id}")
    _require_root(node)
    if gpu.mig_current != 1:
        # nvml.h: NOT_SUPPORTED "if device doesn't have MIG mode enabled".
        raise NvmlFailure(nvml_codes.NOT_SUPPORTED, "MIG mode is disabled")
    if placement is not None and placement not in gi_model.placements:
        raise NvmlFailure(
            nvml_codes.INVALID_ARGUMENT, f"{placement} is not a placement of {gi_model.name}"
        )
    if _gi_room(model, gpu, gi_model) == 0:
        raise NvmlFailure(nvml_codes.INSUFFICIENT_RESOURCES, f"no room for another {gi_model.name}")
    if placement is None:
        sizes = dict(gi_model.placements)
        candidates = [(start, sizes[start]) for start in gi_model.default_order]
    else:
        candidates = [placement]
    chosen = next((p for p in candidates if _gi_free(gpu, p)), None)
    if chosen is None:
        raise NvmlFailure(nvml_codes.INSUFFICIENT_RESOURCES, "every placement overlaps an instance")
    used_ids = {gi.id for gi in gpu.gpu_instances}
    gi_id = gi_partition_id(model.slot_count, *chosen)
    if gi_id is None or gi_id in used_ids:
        gi_id = next(i for i in range(len(used_ids) + 1) if i not in used_ids)
    gi = GpuInstance(
        id=gi_id, profile_id=profile_id, start=chosen[0], size=chosen[1], serial=node.next_serial
    )
    gpu = dataclasses.replace(
        gpu, gpu_instances=tuple(sorted((*gpu.gpu_instances, gi), key=lambda g: g.id))
    )
    node = dataclasses.replace(replace_gpu(node, gpu), next_serial=node.next_serial + 1)
    return node, gi


def destroy_gpu_instance(node: NodeState, gpu_index: int, serial: int) -> NodeState:
    """``nvmlGpuInstanceDestroy``: IN_USE while CIs or processes are inside."""
    gpu = _gpu(node, gpu_index)
    gi = find_gi(gpu, serial)
    if gi is None:
        raise NvmlFailure(nvml_codes.INVALID_ARGUMENT, "stale GPU instance handle")
    _require_root(node)
    if gi.compute_instances:
        raise NvmlFailure(nvml_codes.IN_USE, f"GPU instance {gi.id} still has compute instances")
    if processes_on(node, gpu_index, gi.id):
        raise NvmlFailure(nvml_codes.IN_USE, f"processes run on GPU instance {gi.id}")
    gpu = dataclasses.replace(
        gpu, gpu_instances=tuple(g for g in gpu.gpu_instances if g.serial != serial)
    )
    return replace_gpu(node, gpu)


# ---------------------------------------------------------------------------
# Compute instances
# ---------------------------------------------------------------------------


def _ci_room(gi: GpuInstance, gi_model: GiModel, ci_model: CiModel) -> int:
    existing = [gi_model.ci_by_id(ci.profile_id) for ci in gi.compute_instances]
    used = sum(c.slice_count for c in existing if c is not None)
    return max(
        0,
        min(
            ci_model.instance_count
            - sum(1 for ci in gi.compute_instances if ci.profile_id == ci_model.id),
            MAX_CIS_PER_GI - len(gi.compute_instances),
            (gi_model.slice_count - used) // ci_model.slice_count,
        ),
    )


def _ci_free(gi: GpuInstance, placement: Span) -> bool:
    return not any(overlaps(placement, (ci.start, ci.size)) for ci in gi.compute_instances)


def ci_remaining_capacity(gi: GpuInstance, gi_model: GiModel, ci_model: CiModel) -> int:
    """``nvmlGpuInstanceGetComputeInstanceRemainingCapacity``, by the GI's rules."""
    free = [p for p in ci_model.placements if _ci_free(gi, p)]
    return min(_ci_room(gi, gi_model, ci_model), max_disjoint(free))


def _default_ci_placement(
    model: GpuModel, gi: GpuInstance, gi_model: GiModel, ci_model: CiModel
) -> Span | None:
    free = sorted(p for p in ci_model.placements if _ci_free(gi, p))
    if not free or model.architecture < NVML_DEVICE_ARCH_HOPPER:
        return free[0] if free else None  # Ampere: first fit

    def capacity_left(p: Span) -> int:
        trial = dataclasses.replace(
            gi,
            compute_instances=(
                *gi.compute_instances,
                ComputeInstance(id=-1, profile_id=ci_model.id, start=p[0], size=p[1], serial=-1),
            ),
        )
        return sum(ci_remaining_capacity(trial, gi_model, c) for c in gi_model.compute_instances)

    # Most capacity left; ties to the lowest start (max keeps the first of equals).
    return max(free, key=capacity_left)


def create_compute_instance(
    node: NodeState, gpu_index: int, gi_serial: int, profile_id: int, placement: Span | None
) -> tuple[NodeState, ComputeInstance]:
    """``nvmlGpuInstanceCreateComputeInstance[WithPlacement]``."""
    gpu = _gpu(node, gpu_index)
    gi = find_gi(gpu, gi_serial)
    if gi is None:
        raise NvmlFailure(nvml_codes.INVALID_ARGUMENT, "stale GPU instance handle")
    model = model_of(gpu)
    gi_model = gi_model_of(model, gi)
    if not 0 <= profile_id < CI_PROFILE_INDEX_COUNT:
        raise NvmlFailure(nvml_codes.INVALID_ARGUMENT, f"no CI profile id {profile_id}")
    ci_model = gi_model.ci_by_id(profile_id)
    if ci_model is None:
        raise NvmlFailure(
            nvml_codes.NOT_SUPPORTED, f"{gi_model.name} offers no CI profile {profile_id}"
        )
    _require_root(node)
    if placement is not None and placement not in ci_model.placements:
        raise NvmlFailure(
            nvml_codes.INVALID_ARGUMENT, f"{placement} is not a placement of {ci_model.name}"
        )
    if _ci_room(gi, gi_model, ci_model) == 0:
        raise NvmlFailure(nvml_codes.INSUFFICIENT_RESOURCES, f"no room for another {ci_model.name}")
    if placement is None:
        chosen = _default_ci_placement(model, gi, gi_model, ci_model)
    else:
        chosen = placement if _ci_free(gi, placement) else None
    if chosen is None:
        raise NvmlFailure(
            nvml_codes.INSUFFICIENT_RESOURCES, "every placement overlaps a compute instance"
        )
    used_ids = {ci.id for ci in gi.compute_instances}
    ci = ComputeInstance(
        id=next(i for i in range(MAX_CIS_PER_GI) if i not in used_ids),
        profile_id=profile_id,
        start=chosen[0],
        size=chosen[1],
        serial=node.next_serial,
    )
    new_gi = dataclasses.replace(
        gi, compute_instances=tuple(sorted((*gi.compute_instances, ci), key=lambda c: c.id))
    )
    node = dataclasses.replace(_replace_gi(node, gpu, new_gi), next_serial=node.next_serial + 1)
    return node, ci


def destroy_compute_instance(node: NodeState, gpu_index: int, serial: int) -> NodeState:
    """``nvmlComputeInstanceDestroy``: IN_USE while processes run on it."""
    gpu = _gpu(node, gpu_index)
    found = find_ci(gpu, serial)
    if found is None:
        raise NvmlFailure(nvml_codes.INVALID_ARGUMENT, "stale compute instance handle")
    gi, ci = found
    _require_root(node)
    if processes_on(node, gpu_index, gi.id, ci.id):
        raise NvmlFailure(nvml_codes.IN_USE, f"processes run on compute instance {gi.id}/{ci.id}")
    new_gi = dataclasses.replace(
        gi, compute_instances=tuple(c for c in gi.compute_instances if c.serial != serial)
    )
    return _replace_gi(node, gpu, new_gi)


# ---------------------------------------------------------------------------
# MIG mode and resets
# ---------------------------------------------------------------------------


def set_mig_mode(node: NodeState, gpu_index: int, mode: int) -> tuple[NodeState, int]:
    """``nvmlDeviceSetMigMode``: the new node and the activationStatus (a return code)."""
    gpu = _gpu(node, gpu_index)
    model = model_of(gpu)
    _require_mig_capable(model)
    if mode not in (0, 1):
        raise NvmlFailure(nvml_codes.INVALID_ARGUMENT, f"MIG mode {mode}")
    _require_root(node)
    if mode == 0 and gpu.gpu_instances:
        raise NvmlFailure(nvml_codes.IN_USE, "GPU instances exist")
    if mode == gpu.mig_current:
        # Nothing to activate; a pending change the other way is withdrawn.
        return replace_gpu(node, dataclasses.replace(gpu, mig_pending=mode)), nvml_codes.SUCCESS
    busy = bool(processes_on(node, gpu_index))
    if model.mode_change_needs_reset:
        if node.flags.passthrough:
            status = nvml_codes.RESET_REQUIRED
        elif node.flags.system_clients or busy:
            status = nvml_codes.IN_USE
        else:
            status = nvml_codes.SUCCESS
    else:
        status = nvml_codes.IN_USE if busy else nvml_codes.SUCCESS
    if status == nvml_codes.SUCCESS:
        gpu = dataclasses.replace(gpu, mig_current=mode, mig_pending=mode, gpu_instances=())
    else:
        gpu = dataclasses.replace(gpu, mig_pending=mode)
    return replace_gpu(node, gpu), status


def reset_gpus(node: NodeState, indices: Iterable[int]) -> NodeState:
    """What ``nvidia-smi -r -i`` does: apply each pending mode, destroy every instance.

    All or nothing: raises :class:`ResetRefused` (and changes nothing) under VM
    passthrough, for a lost GPU, or while processes run on any of the GPUs.
    """
    wanted = sorted(set(indices))
    for index in wanted:
        if not 0 <= index < len(node.gpus):
            raise InvalidRequest(f"no GPU {index} on this node ({len(node.gpus)} GPUs)")
    if node.flags.passthrough:
        raise ResetRefused(
            "GPU reset is not possible under VM passthrough: reboot the VM "
            "(this node was made with 'migd sim init --passthrough')"
        )
    for index in wanted:
        if index in node.faults.lost_gpus:
            raise ResetRefused(f"GPU {index} is lost (fallen off the bus): it cannot be reset")
        busy = processes_on(node, index)
        if busy:
            pids = ", ".join(str(p.pid) for p in busy)
            raise ResetRefused(f"GPU {index} is in use by process(es) {pids}: not reset")
    for index in wanted:
        gpu = node.gpus[index]
        node = replace_gpu(
            node, dataclasses.replace(gpu, mig_current=gpu.mig_pending, gpu_instances=())
        )
    return node


def reboot(node: NodeState) -> NodeState:
    """What a reboot does to the node (``migd sim reboot``): each pending MIG mode becomes
    the current one, and every GPU instance, compute instance and process is gone (MIG
    instances do not survive a reboot). The MIG mode itself persists, as on real GPUs.
    Passthrough or a busy GPU does not matter: a reboot always happens. Faults stay set.
    """
    gpus = tuple(
        dataclasses.replace(gpu, mig_current=gpu.mig_pending, gpu_instances=()) for gpu in node.gpus
    )
    return dataclasses.replace(node, gpus=gpus, processes=())


# ---------------------------------------------------------------------------
# Processes (``migd sim process``)
# ---------------------------------------------------------------------------


def add_process(
    node: NodeState, pid: int, gpu_index: int, gi_id: int | None, ci_id: int | None
) -> NodeState:
    """A process starts on a GPU (MIG off), or on a GI or a CI of it (MIG on)."""
    if pid <= 0:
        raise InvalidRequest(f"a pid is a positive number, not {pid}")
    if any(p.pid == pid for p in node.processes):
        raise InvalidRequest(f"process {pid} already exists")
    if not 0 <= gpu_index < len(node.gpus):
        raise InvalidRequest(f"no GPU {gpu_index} on this node ({len(node.gpus)} GPUs)")
    gpu = node.gpus[gpu_index]
    if gpu.mig_current != 1:
        if gi_id is not None or ci_id is not None:
            raise InvalidRequest(
                f"MIG is disabled on GPU {gpu_index}: a process there has no --gi/--ci"
            )
    else:
        if gi_id is None:
            raise InvalidRequest(f"MIG is enabled on GPU {gpu_index}: give --gi (and --ci)")
        gi = find_gi_by_id(gpu, gi_id)
        if gi is None:
            raise InvalidRequest(f"GPU {gpu_index} has no GPU instance {gi_id}")
        if ci_id is not None and not any(ci.id == ci_id for ci in gi.compute_instances):
            raise InvalidRequest(
                f"GPU instance {gi_id} on GPU {gpu_index} has no compute instance {ci_id}"
            )
    process = Process(pid=pid, gpu=gpu_index, gi=gi_id, ci=ci_id)
    return dataclasses.replace(node, processes=(*node.processes, process))


def remove_process(node: NodeState, pid: int) -> NodeState:
    if not any(p.pid == pid for p in node.processes):
        raise InvalidRequest(f"no process {pid}")
    return dataclasses.replace(node, processes=tuple(p for p in node.processes if p.pid != pid))
