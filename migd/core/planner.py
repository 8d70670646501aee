"""The planner: from a snapshot of the node and a goal, the one Plan of what to do.

:func:`plan_node` is the only way migd plans. The goal is either the layouts the
selected config wants (selection's ``desired_layouts``), or a checkpoint: restoring
is planning towards recorded geometry. ``migd plan`` prints the result, ``migd
apply``, ``migd restore`` and the daemon execute it, the change orchestrator reads it,
and the executor plans towards a GPU's own checkpoint to put a failed GPU back.

Pure: no NVML, no I/O, no clock. Everything here works on the value types of
``migd.core.layout``; where instances fit is ``migd.core.placement``'s to say.

What is kept, towards a layout. Among the existing GIs whose profile *and* CI profile
multiset equal a wanted :class:`GiSpec`, the planner keeps a largest set that one
complete arrangement of the wanted layout can hold: busy GIs (with running processes)
count first, then all GIs, then lower GI ids. A busy GI outside that set blocks the
GPU unless ``force`` is given: migd never destroys work on its own.

What is kept, towards a checkpoint. A GI whose profile and placement are recorded is
kept (placements never overlap, so a placement names one GI) and only its CIs are
corrected; everything else is destroyed and the rest of the record created as
recorded. Busy instances block as above.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from migd.core.layout import (
    DesiredGpu,
    GiSpec,
    GpuInstance,
    GpuState,
    NodeSnapshot,
    Placement,
    gi_spec,
)
from migd.core.names import format_counts, layout_counts, profile_label
from migd.core.placement import arrange_specs, layout_problem, place_cis
from migd.core.plan import Action, Blocker, CiCreate, GiCreate, GpuPlan, NodePlan
from migd.errors import InvalidRequest

if TYPE_CHECKING:  # only a restore plans towards one: `migd plan` does not load them
    from migd.core.checkpoint import Checkpoint, GpuRecord

# ---------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------


def plan_node(
    snapshot: NodeSnapshot,
    goal: Sequence[DesiredGpu] | Checkpoint,
    *,
    force: bool = False,
    mode_only: bool = False,
) -> NodePlan:
    """The plan that brings the node in ``snapshot`` to ``goal``.

    ``goal`` is a desired layout per GPU (GPUs without one are left alone), or a
    checkpoint (its GPUs found by UUID; GPUs it does not record are left alone).
    ``force``: busy instances may be destroyed. ``mode_only``: only the MIG mode
    changes, instances are left as they are (``apply -m``).

    A GPU that could not be read gets no plan but UNREADABLE: not even whether the
    goal covers it is known. Raises InvalidRequest, before anything is touched, when
    the goal names a GPU the node lacks or a layout a GPU cannot hold (selection
    checks layouts first, so that only guards other callers).
    """
    # A checkpoint is the one goal that is not a sequence of desired layouts.
    if isinstance(goal, Sequence):
        plans = _towards_layouts(snapshot, goal, force=force, mode_only=mode_only)
    else:
        plans = _towards_checkpoint(snapshot, goal, force=force)
    planned = {p.index for p in plans}
    for gpu in sorted(snapshot.gpus, key=lambda g: g.index):
        if gpu.index in planned:
            continue
        if not gpu.readable:
            plans.append(GpuPlan(gpu, Action.UNREADABLE, reason=gpu.unreadable_reason))
        elif not isinstance(goal, Sequence):
            plans.append(GpuPlan(gpu, Action.SKIPPED, reason="not in the checkpoint"))
        elif not gpu.mig_capable:
            plans.append(GpuPlan(gpu, Action.SKIPPED, reason="not MIG-capable"))
        else:
            plans.append(GpuPlan(gpu, Action.SKIPPED, reason="not covered by the selected config"))
    return NodePlan(snapshot, tuple(plans), force=force)


def _decide(plan: GpuPlan) -> GpuPlan:
    """``plan`` with its action: nothing to do, blocked, or a change to carry out."""
    if not plan.has_steps:
        return replace(plan, action=Action.NOOP)
    if plan.blockers:
        reason = plan.reason or "; ".join(b.reason for b in plan.blockers)
        return replace(plan, action=Action.BLOCKED, reason=reason)
    return replace(plan, action=Action.CHANGE)


# ---------------------------------------------------------------------------
# Towards the layouts a config wants
# ---------------------------------------------------------------------------


def _towards_layouts(
    snapshot: NodeSnapshot, desired: Sequence[DesiredGpu], *, force: bool, mode_only: bool
) -> list[GpuPlan]:
    plans = []
    for want in sorted(desired, key=lambda d: d.index):
        try:
            gpu = snapshot.gpu(want.index)
        except KeyError:
            raise InvalidRequest(f"GPU {want.index} is not present on this node") from None
        if not gpu.readable:
            continue  # UNREADABLE, as every GPU that could not be read
        plans.append(plan_gpu(gpu, want, force=force, mode_only=mode_only))
    return plans


def plan_gpu(
    gpu: GpuState, desired: DesiredGpu, *, force: bool = False, mode_only: bool = False
) -> GpuPlan:
    """The plan that brings one GPU to ``desired`` (:func:`plan_node` does it for each).

    Raises InvalidRequest when the desired layout cannot be held by this GPU at all.
    """
    if not gpu.mig_capable:
        if desired.mig_enabled:
            raise InvalidRequest(f"GPU {gpu.index} ({gpu.name}) is not MIG-capable")
        return GpuPlan(gpu, Action.SKIPPED, desired, reason="not MIG-capable")
    set_mode = None if gpu.mig_pending == desired.mig_enabled else desired.mig_enabled
    activate_mode = gpu.mig_enabled != desired.mig_enabled
    specs = {gi.id: gi_spec(gi) for gi in gpu.instances}
    wanted: Counter[GiSpec] = Counter(desired.instances if desired.mig_enabled else ())
    if desired.mig_enabled:
        problem = layout_problem(gpu, desired.instances)
        if problem is not None:
            raise InvalidRequest(f"GPU {gpu.index} ({gpu.name}): {problem}")
        kept, arranged = _kept_set(gpu, wanted, specs)
    else:
        kept, arranged = (), []
    kept_ids = {gi.id for gi in kept}
    # Busy GIs (destroyed only under force) go first: if the driver refuses one, the
    # GPU is still exactly as it was and nothing needs restoring.
    gone = sorted(
        (gi for gi in gpu.instances if gi.id not in kept_ids), key=lambda g: (not g.busy, g.id)
    )
    blockers = (
        ()
        if force
        else tuple(_blocker(gpu, gi, desired, wanted, specs[gi.id]) for gi in gone if gi.busy)
    )
    plan = GpuPlan(
        gpu,
        Action.CHANGE,
        desired,
        keep=tuple(sorted(kept_ids)),
        destroy_cis=tuple((gi.id, ci.id) for gi in gone for ci in gi.compute_instances),
        destroy_gis=tuple(gi.id for gi in gone),
        set_mode=set_mode,
        activate_mode=activate_mode,
        create_gis=_creates(gpu, arranged),
        blockers=blockers,
        mode_only=mode_only,
    )
    if mode_only:
        # The mode alone: with no mode change there is nothing to do; with one, what
        # it needs (a GPU's instances must go before MIG is turned off), no creates.
        if set_mode is None and not activate_mode:
            plan = GpuPlan(gpu, Action.NOOP, desired, keep=plan.keep, mode_only=True)
        else:
            plan = replace(plan, create_gis=())
    return _decide(plan)


def _gi_label(gpu: GpuState, gi: GpuInstance) -> str:
    return f"GI {gi.id} ({profile_label(gpu, gi.profile_id)} at {gi.placement})"


def _kept_set(
    gpu: GpuState, wanted: Counter[GiSpec], specs: Mapping[int, GiSpec]
) -> tuple[tuple[GpuInstance, ...], list[tuple[GiSpec, Placement]]]:
    """The GIs to keep and where the remaining wanted GIs go.

    Tries candidate keep-sets best first (most busy GIs, then most GIs, then lowest
    ids) and takes the first that one complete arrangement can hold. The empty set
    always works when the wanted layout fits an empty GPU, which the caller checked.
    """
    matchable = sorted((gi for gi in gpu.instances if specs[gi.id] in wanted), key=lambda g: g.id)
    candidates = []
    for size in range(len(matchable), -1, -1):
        for subset in itertools.combinations(matchable, size):
            if Counter(specs[gi.id] for gi in subset) - wanted:
                continue  # keeps more GIs of one spec than the layout wants
            busy = sum(gi.busy for gi in subset)
            candidates.append(((-busy, -size, tuple(gi.id for gi in subset)), subset))
    candidates.sort(key=lambda c: c[0])
    for _, subset in candidates:
        remaining = wanted - Counter(specs[gi.id] for gi in subset)
        arranged = arrange_specs(gpu, list(remaining.elements()), [gi.placement for gi in subset])
        if arranged is not None:
            return subset, arranged
    raise AssertionError("the empty keep-set must fit a layout that fits an empty GPU")


def _blocker(
    gpu: GpuState, gi: GpuInstance, desired: DesiredGpu, wanted: Counter[GiSpec], spec: GiSpec
) -> Blocker:
    name = profile_label(gpu, gi.profile_id)
    pids = tuple(sorted({*gi.pids, *(pid for ci in gi.compute_instances for pid in ci.pids)}))
    if not desired.mig_enabled:
        why = "MIG is to be disabled"
    elif spec in wanted:
        why = "the desired layout cannot be placed around it"
    elif any(w.profile_id == gi.profile_id for w in wanted):
        held = format_counts(layout_counts(gpu, [spec]))
        why = f"its compute instances ({held}) differ from the desired ones"
    else:
        why = f"{name} is not in the desired layout"
    pid_text = ", ".join(str(p) for p in pids)
    reason = (
        f"{_gi_label(gpu, gi)} runs pid(s) {pid_text} and would have to be destroyed: {why} "
        "(force overrides)"
    )
    return Blocker(gi_id=gi.id, profile=name, pids=pids, reason=reason)


def _creates(gpu: GpuState, arranged: Sequence[tuple[GiSpec, Placement]]) -> tuple[GiCreate, ...]:
    creates = []
    for spec, placement in sorted(arranged, key=lambda sp: (sp[1].start, sp[0])):
        profile = gpu.profile_by_id(spec.profile_id)
        cis = place_cis(profile, spec.ci_profile_ids) if profile is not None else None
        if cis is None:  # layout_problem() accepted this spec, so this cannot happen
            raise AssertionError(f"no CI placement for {spec}")
        creates.append(GiCreate(spec.profile_id, placement, cis))
    return tuple(creates)


# ---------------------------------------------------------------------------
# Towards a checkpoint
# ---------------------------------------------------------------------------


def _towards_checkpoint(
    snapshot: NodeSnapshot, checkpoint: Checkpoint, *, force: bool
) -> list[GpuPlan]:
    by_uuid = {g.uuid: g for g in snapshot.gpus}
    missing = [r.uuid for r in checkpoint.gpus if r.uuid not in by_uuid]
    if missing:
        raise InvalidRequest(
            f"the checkpoint names GPUs this node does not have: {', '.join(missing)}"
        )
    plans = []
    for record in checkpoint.gpus:
        gpu = by_uuid[record.uuid]
        if gpu.readable:  # else UNREADABLE: a difference to an unknown state means nothing
            plans.append(_plan_exact(gpu, record, force=force))
    return plans


def _plan_exact(gpu: GpuState, record: GpuRecord, *, force: bool) -> GpuPlan:
    """The steps that bring ``gpu`` back to ``record``, keeping whatever already matches."""
    wanted = {(gi.profile_id, gi.placement): gi for gi in record.instances}
    keep_target = wanted if record.mig_enabled else {}
    keep: list[int] = []
    destroy_cis: list[tuple[int, int]] = []
    destroy_gis: list[int] = []
    create_cis: list[tuple[int, CiCreate]] = []
    busy: list[tuple[GpuInstance, tuple[int, ...]]] = []
    matched: set[tuple[int, Placement]] = set()
    for gi in gpu.instances:
        key = (gi.profile_id, gi.placement)
        target = keep_target.get(key)
        if target is None:
            destroy_cis.extend((gi.id, ci.id) for ci in gi.compute_instances)
            destroy_gis.append(gi.id)
            if gi.busy:
                pids = {*gi.pids, *(pid for ci in gi.compute_instances for pid in ci.pids)}
                busy.append((gi, tuple(sorted(pids))))
            continue
        matched.add(key)
        keep.append(gi.id)
        have = {(ci.profile_id, ci.placement): ci for ci in gi.compute_instances}
        want = {(ci.profile_id, ci.placement): ci for ci in target.compute_instances}
        for ci_key, ci in have.items():
            if ci_key not in want:
                destroy_cis.append((gi.id, ci.id))
                if ci.pids:
                    busy.append((gi, ci.pids))
        create_cis.extend(
            (gi.id, CiCreate(ci.profile_id, ci.placement))
            for ci_key, ci in sorted(want.items())
            if ci_key not in have
        )
    create_gis = tuple(
        GiCreate(
            gi.profile_id,
            gi.placement,
            tuple(CiCreate(ci.profile_id, ci.placement) for ci in gi.compute_instances),
        )
        for key, gi in sorted(keep_target.items())
        if key not in matched
    )
    blockers = () if force else tuple(_busy_blocker(gpu, gi, pids) for gi, pids in busy)
    reason = ""
    if blockers:
        gis = ", ".join(b.reason for b in blockers)
        reason = f"restoring would destroy busy instances: {gis} (force overrides)"
    specs = (
        GiSpec(gi.profile_id, tuple(sorted(ci.profile_id for ci in gi.compute_instances)))
        for gi in record.instances
    )
    target = DesiredGpu(gpu.index, record.mig_enabled, tuple(sorted(specs)))
    return _decide(
        GpuPlan(
            gpu,
            Action.CHANGE,
            target,
            reason=reason,
            keep=tuple(sorted(keep)),
            destroy_cis=tuple(destroy_cis),
            destroy_gis=tuple(destroy_gis),
            # A pending change away from the recorded mode is withdrawn too.
            set_mode=None if gpu.mig_pending == record.mig_enabled else record.mig_enabled,
            activate_mode=gpu.mig_enabled != record.mig_enabled,
            create_cis=tuple(create_cis),
            create_gis=create_gis,
            blockers=blockers,
            exact=record,
        )
    )


def _busy_blocker(gpu: GpuState, gi: GpuInstance, pids: tuple[int, ...]) -> Blocker:
    name = profile_label(gpu, gi.profile_id)
    return Blocker(gi.id, name, pids, f"GI {gi.id} (pid {', '.join(map(str, pids))})")
