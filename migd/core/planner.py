"""The planner: from what a GPU holds and what it should hold, an ordered plan of operations.

Pure: no NVML, no I/O, no clock. Everything here works on the value types of
``migd.core.layout``; the reconciler executes the resulting :class:`GpuPlan`.

How a layout is placed. A GPU instance (GI) occupies ``[start, start+size)`` on the
GPU's memory-slice axis at one of its profile's possible placements; a compute
instance (CI) occupies a span of its GI's compute axis at one of its CI profile's
placements. Besides overlap, a set of instances must respect rules that depend only
on *which* instances they are, not where they sit (:func:`_gi_count_problem`,
:func:`_ci_count_problem`): per-profile instance counts, the compute-slice budget
(7 on an 8-slot GPU, a GI's own slice count inside it) and the media-engine limit.
The axes are tiny (8 units, 12 on RTX PRO 6000), so the search is exact: kinds are
placed one after another, each kind's copies as one combination of disjoint
placements, memoised on (kind, occupied mask). It finds an arrangement whenever one
exists, and always the same one for the same input.

What is kept. Among the existing GIs whose profile *and* CI profile multiset equal a
wanted :class:`GiSpec`, the planner keeps a largest set that one complete
arrangement of the wanted layout can hold: busy GIs (with running processes) count
first, then all GIs, then lower GI ids. A busy GI outside that set blocks the GPU
unless ``force`` is given: migd never destroys work on its own.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from migd.core.layout import (
    CiProfile,
    DesiredGpu,
    GiProfile,
    GiSpec,
    GpuInstance,
    GpuState,
    NodeSnapshot,
    Placement,
)
from migd.core.profiles import ProfileName, ProfileNameError
from migd.errors import InvalidRequest

# ---------------------------------------------------------------------------
# Plan value types (executed by the reconciler)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CiCreate:
    """Create a CI of CI profile ``profile_id`` at ``placement`` on its GI's compute axis."""

    profile_id: int
    placement: Placement


@dataclass(frozen=True)
class GiCreate:
    """Create a GI of profile ``profile_id`` at ``placement``, then its CIs in order."""

    profile_id: int
    placement: Placement
    cis: tuple[CiCreate, ...]


@dataclass(frozen=True)
class GiDestroy:
    """Destroy GI ``gi_id``: the reconciler destroys its CIs first, then the GI."""

    gi_id: int


@dataclass(frozen=True)
class Blocker:
    """A busy GI the plan would have to destroy; ``reason`` is one sentence for an operator."""

    gi_id: int
    profile: str
    pids: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class GpuPlan:
    """What to do on one GPU, in execution order: set the mode, destroy, then create.

    When ``blocked`` is non-empty nothing may be done on this GPU; ``destroy`` and
    ``create`` then show what ``force`` would do, so an operator sees the cost.
    """

    index: int
    desired: DesiredGpu
    set_mode: bool | None  # MIG mode to request with SetMigMode; None: pending mode is right
    activate_mode: bool  # current mode differs from the desired one (a reset may follow)
    keep: tuple[int, ...]  # GI ids kept untouched
    destroy: tuple[GiDestroy, ...]  # in execution order
    create: tuple[GiCreate, ...]  # in execution order, explicit placements for GIs and CIs
    blocked: tuple[Blocker, ...]  # non-empty: nothing may be done on this GPU

    @property
    def noop(self) -> bool:
        return not (
            self.blocked
            or self.set_mode is not None
            or self.activate_mode
            or self.destroy
            or self.create
        )


# ---------------------------------------------------------------------------
# Exact placement search on one axis
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """``count`` interchangeable instances of one profile, each at one of ``placements``."""

    key: int  # profile id
    count: int
    placements: tuple[Placement, ...]


def _mask(placement: Placement) -> int:
    return ((1 << placement.size) - 1) << placement.start


def _combinations(
    options: Sequence[tuple[Placement, int]], count: int, occupied: int, first: int = 0
) -> Iterator[tuple[tuple[Placement, ...], int]]:
    """Every choice of ``count`` pairwise-disjoint free options, in ascending order.

    Copies of one profile are interchangeable, so choosing them as an increasing
    combination (not a permutation) removes the symmetric branches of the search.
    """
    if count == 0:
        yield (), 0
        return
    for i in range(first, len(options) - count + 1):
        placement, mask = options[i]
        if mask & occupied:
            continue
        for rest, rest_mask in _combinations(options, count - 1, occupied | mask, i + 1):
            yield (placement, *rest), mask | rest_mask


def _arrange(kinds: Iterable[_Kind], occupied: int = 0) -> dict[int, tuple[Placement, ...]] | None:
    """Placements for every instance of every kind, disjoint and off ``occupied``; None if none.

    Kinds with the widest placements go first (they have the fewest ways to fit);
    within a kind, placements are tried from the lowest start. Deterministic.
    """
    ordered = sorted(
        (k for k in kinds if k.count > 0),
        key=lambda k: (-max((p.size for p in k.placements), default=0), len(k.placements), k.key),
    )
    options = [[(p, _mask(p)) for p in sorted(set(k.placements))] for k in ordered]
    memo: dict[tuple[int, int], tuple[tuple[Placement, ...], ...] | None] = {}

    def solve(i: int, occ: int) -> tuple[tuple[Placement, ...], ...] | None:
        if i == len(ordered):
            return ()
        if (i, occ) in memo:
            return memo[(i, occ)]
        found = None
        for chosen, mask in _combinations(options[i], ordered[i].count, occ):
            rest = solve(i + 1, occ | mask)
            if rest is not None:
                found = (chosen, *rest)
                break
        memo[(i, occ)] = found
        return found

    result = solve(0, occupied)
    if result is None:
        return None
    return {kind.key: chosen for kind, chosen in zip(ordered, result, strict=True)}


# ---------------------------------------------------------------------------
# Rules that depend only on which instances a layout holds
# ---------------------------------------------------------------------------


def compute_slices(gpu: GpuState) -> int:
    """Compute slices of the GPU: the slice count of its largest profile (7 on 8-slot GPUs)."""
    return max((p.slice_count for p in gpu.profiles), default=0)


def parsed_name(profile: GiProfile) -> ProfileName | None:
    """The parsed name of a GI profile; None for a name outside the grammar (never matched)."""
    try:
        return profile.parsed
    except ProfileNameError:
        return None


def _media_problem(profiles: Sequence[GiProfile]) -> str | None:
    """The media-engine rules: one ``+me`` GI per GPU; ``+me.all`` leaves only ``-me`` beside it."""
    parsed = [(p, parsed_name(p)) for p in profiles]
    exclusive = [
        p for p, n in parsed if n is not None and n.attributes == ("me",) and not n.negated
    ]
    all_me = [p for p, n in parsed if n is not None and "me.all" in n.attributes]
    if len(exclusive) + len(all_me) > 1:
        names = ", ".join(p.name for p in exclusive + all_me)
        return f"at most one instance per GPU may own media engines (+me), wanted: {names}"
    if all_me:
        others = [p.name for p, n in parsed if p is not all_me[0] and not (n and n.negated)]
        if others:
            return (
                f"{all_me[0].name} takes every media engine: only -me profiles fit beside it, "
                f"not {', '.join(sorted(set(others)))}"
            )
    return None


def _gi_count_problem(gpu: GpuState, counts: Mapping[int, int]) -> str | None:
    """Why a multiset of GI profile ids cannot coexist on ``gpu``, whatever the placements."""
    profiles: list[GiProfile] = []
    for profile_id, count in sorted(counts.items()):
        profile = gpu.profile_by_id(profile_id)
        if profile is None:
            return f"GI profile id {profile_id} is not offered by this GPU"
        if count > profile.instance_count:
            return f"{count}× {profile.name} wanted, at most {profile.instance_count} fit"
        profiles.extend([profile] * count)
    used = sum(p.slice_count for p in profiles)
    total = compute_slices(gpu)
    if used > total:
        return f"the instances need {used} compute slices, the GPU has {total}"
    return _media_problem(profiles)


def _ci_count_problem(gi: GiProfile, counts: Mapping[int, int]) -> str | None:
    """Why a multiset of CI profile ids cannot coexist in one GI of profile ``gi``."""
    used = 0
    for ci_id, count in sorted(counts.items()):
        ci = ci_profile(gi, ci_id)
        if ci is None:
            return f"{gi.name} offers no compute-instance profile id {ci_id}"
        if count > ci.instance_count:
            return f"{count}× {ci.name} wanted in one {gi.name}, at most {ci.instance_count} fit"
        used += ci.slice_count * count
    if used > gi.slice_count:
        return f"the compute instances need {used} slices, a {gi.name} has {gi.slice_count}"
    return None


def ci_profile(gi: GiProfile, ci_id: int) -> CiProfile | None:
    """The CI profile with id ``ci_id`` that GI profile ``gi`` offers, if any."""
    return next((ci for ci in gi.ci_profiles if ci.id == ci_id), None)


def place_cis(gi: GiProfile, ci_ids: Iterable[int]) -> tuple[CiCreate, ...] | None:
    """Explicit placements for CIs of ``ci_ids`` inside one GI of profile ``gi``; None if none.

    The result lists the CIs widest first, in the order they should be created.
    """
    counts = Counter(ci_ids)
    if _ci_count_problem(gi, counts) is not None:
        return None
    kinds = []
    for ci in gi.ci_profiles:  # every id is offered: _ci_count_problem() checked it
        if counts[ci.id]:
            kinds.append(_Kind(ci.id, counts[ci.id], ci.placements))
    arranged = _arrange(kinds)
    if arranged is None:
        return None
    creates = [CiCreate(ci_id, p) for ci_id, placements in arranged.items() for p in placements]
    return tuple(sorted(creates, key=lambda c: (-c.placement.size, c.placement.start)))


def gi_spec(instance: GpuInstance) -> GiSpec:
    """The spec an existing GI satisfies: its profile and the sorted ids of its CI profiles."""
    return GiSpec(
        instance.profile_id, tuple(sorted(ci.profile_id for ci in instance.compute_instances))
    )


def layout_problem(
    gpu: GpuState, specs: Sequence[GiSpec], occupied: Sequence[Placement] = ()
) -> str | None:
    """Why ``specs`` cannot all be placed on ``gpu`` (beside ``occupied``); None when they fit.

    The count rules apply to ``specs`` alone: to judge them together with what holds
    ``occupied``, pass those GIs in ``specs`` too (on an empty axis).

    Checks each GI's CIs against its CI placements, then the GI-level count rules,
    then searches an arrangement on the memory-slice axis.
    """
    for spec in sorted(set(specs)):
        profile = gpu.profile_by_id(spec.profile_id)
        if profile is None:
            return f"GI profile id {spec.profile_id} is not offered by this GPU"
        if not spec.ci_profile_ids:
            continue
        problem = _ci_count_problem(profile, Counter(spec.ci_profile_ids))
        if problem is not None:
            return problem
        if place_cis(profile, spec.ci_profile_ids) is None:
            names = "+".join(_ci_name(profile, ci) for ci in spec.ci_profile_ids)
            return f"the compute instances {names} do not fit one {profile.name} together"
    problem = _gi_count_problem(gpu, Counter(s.profile_id for s in specs))
    if problem is not None:
        return problem
    if _arrange_specs(gpu, specs, occupied) is None:
        beside = " beside the occupied ones" if occupied else ""
        return (
            f"no arrangement of these instances fits the GPU's {gpu.slot_count} memory slices"
            + beside
        )
    return None


def _arrange_specs(
    gpu: GpuState, specs: Sequence[GiSpec], occupied: Sequence[Placement] = ()
) -> list[tuple[GiSpec, Placement]] | None:
    """A placement for each spec (overlap only: the count rules are checked elsewhere)."""
    by_profile: dict[int, list[GiSpec]] = {}
    for spec in specs:
        by_profile.setdefault(spec.profile_id, []).append(spec)
    kinds = []
    for profile_id, group in by_profile.items():
        profile = gpu.profile_by_id(profile_id)
        if profile is None:
            return None
        kinds.append(_Kind(profile_id, len(group), profile.placements))
    occ = 0
    for placement in occupied:
        occ |= _mask(placement)
    arranged = _arrange(kinds, occ)
    if arranged is None:
        return None
    # Specs of one profile differ only in their CIs, which move with the GI wherever it
    # sits: pairing them with the placements in sorted order keeps the result stable.
    return [
        pair
        for profile_id, group in sorted(by_profile.items())
        for pair in zip(sorted(group), arranged[profile_id], strict=True)
    ]


# ---------------------------------------------------------------------------
# Names of what a GPU holds or should hold
# ---------------------------------------------------------------------------


def _ci_name(gi: GiProfile, ci_id: int) -> str:
    ci = ci_profile(gi, ci_id)
    return ci.name if ci is not None else f"{gi.name} CI profile {ci_id}"


def profile_label(gpu: GpuState, profile_id: int) -> str:
    """The name of GI profile ``profile_id`` on ``gpu``, or a readable stand-in if unknown."""
    profile = gpu.profile_by_id(profile_id)
    return profile.name if profile is not None else f"GI profile {profile_id}"


def spec_names(gpu: GpuState, spec: GiSpec) -> tuple[str, ...]:
    """The config names one GI stands for.

    A GI holding just its full CI (or no CI at all) is its GI profile name
    (``2g.35gb``); a GI holding partial CIs is one ``1c.2g.35gb``-style name per CI.
    """
    profile = gpu.profile_by_id(spec.profile_id)
    if profile is None:
        return (f"GI profile {spec.profile_id}",)
    full = profile.full_ci()
    if not spec.ci_profile_ids or (full is not None and spec.ci_profile_ids == (full.id,)):
        return (profile.name,)
    return tuple(_ci_name(profile, ci_id) for ci_id in spec.ci_profile_ids)


def name_order(name: str) -> tuple[int, int, int, str]:
    """Sort key for profile names: by GI size, memory, then CI size (unparsable ones last)."""
    try:
        parsed = ProfileName.parse(name)
    except ProfileNameError:
        return (1 << 30, 0, 0, name)
    ci = parsed.ci_slices if parsed.ci_slices is not None else parsed.gi_slices
    return (parsed.gi_slices, parsed.memory_gb or 0, ci, name)


def layout_counts(gpu: GpuState, specs: Iterable[GiSpec]) -> tuple[tuple[str, int], ...]:
    """Profile name → count over ``specs``, smallest profiles first (see :func:`spec_names`)."""
    counts = Counter(name for spec in specs for name in spec_names(gpu, spec))
    return tuple((name, counts[name]) for name in sorted(counts, key=name_order))


def format_counts(counts: Sequence[tuple[str, int]]) -> str:
    """``1g.18gb×2+2g.35gb``; ``no instances`` for an empty layout."""
    if not counts:
        return "no instances"
    return "+".join(name if n == 1 else f"{name}×{n}" for name, n in counts)


def observed_layout(gpu: GpuState) -> tuple[tuple[str, int], ...]:
    """What ``gpu`` holds as profile name → count, in the config's own terms (for export).

    Round-trips through selection when partial CIs are packed as densely as
    selection packs them; a GI with no CI at all is named like a whole GI.
    """
    return layout_counts(gpu, (gi_spec(gi) for gi in gpu.instances))


def layout_matches(gpu: GpuState, desired: DesiredGpu) -> bool:
    """Whether ``gpu`` already holds ``desired``: mode (current and pending) and instances."""
    if not gpu.mig_capable:
        return not desired.mig_enabled
    if gpu.mig_enabled != desired.mig_enabled or gpu.mig_pending != desired.mig_enabled:
        return False
    return sorted(gi_spec(gi) for gi in gpu.instances) == sorted(desired.instances)


# ---------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------


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
        arranged = _arrange_specs(gpu, list(remaining.elements()), [gi.placement for gi in subset])
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


def plan_gpu(gpu: GpuState, desired: DesiredGpu, *, force: bool = False) -> GpuPlan:
    """The plan that brings ``gpu`` to ``desired``.

    Raises InvalidRequest when the desired layout cannot be held by this GPU at all
    (selection checks that first, so this only guards other callers).
    """
    if not gpu.mig_capable:
        if desired.mig_enabled:
            raise InvalidRequest(f"GPU {gpu.index} ({gpu.name}) is not MIG-capable")
        return GpuPlan(gpu.index, desired, None, False, (), (), (), ())
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
    blocked = (
        ()
        if force
        else tuple(_blocker(gpu, gi, desired, wanted, specs[gi.id]) for gi in gone if gi.busy)
    )
    return GpuPlan(
        index=gpu.index,
        desired=desired,
        set_mode=set_mode,
        activate_mode=activate_mode,
        keep=tuple(sorted(kept_ids)),
        destroy=tuple(GiDestroy(gi.id) for gi in gone),
        create=_creates(gpu, arranged),
        blocked=blocked,
    )


def plan_node(
    snapshot: NodeSnapshot, desired: Sequence[DesiredGpu], *, force: bool = False
) -> tuple[GpuPlan, ...]:
    """One plan per desired GPU, by GPU index. GPUs without a desired layout get none."""
    plans = []
    for want in sorted(desired, key=lambda d: d.index):
        try:
            gpu = snapshot.gpu(want.index)
        except KeyError:
            raise InvalidRequest(f"GPU {want.index} is not present on this node") from None
        plans.append(plan_gpu(gpu, want, force=force))
    return tuple(plans)


# ---------------------------------------------------------------------------
# Showing a plan (``migd plan``)
# ---------------------------------------------------------------------------


def _placement_dict(placement: Placement) -> dict[str, int]:
    return {"start": placement.start, "size": placement.size}


def describe(gpu: GpuState, desired: DesiredGpu) -> str:
    """A layout in one line for logs and STATUS: ``1g.18gb×2+2g.35gb+3g.71gb``."""
    if not desired.mig_enabled:
        return "MIG disabled"
    return format_counts(layout_counts(gpu, desired.instances))


def describe_current(gpu: GpuState) -> str:
    """What a GPU holds in one line: ``1g.18gb×2+3g.71gb``, ``MIG disabled (enable pending)``."""
    if not gpu.mig_capable:
        return "not MIG-capable"
    if not gpu.mig_enabled:
        return "MIG disabled" + (" (enable pending)" if gpu.mig_pending else "")
    pending = " (disable pending)" if not gpu.mig_pending else ""
    return format_counts(observed_layout(gpu)) + pending


def plan_to_dict(plan: GpuPlan, gpu: GpuState) -> dict[str, Any]:
    """A JSON-ready description of ``plan`` on ``gpu`` (``migd plan -o json``)."""
    instances = {gi.id: gi for gi in gpu.instances}

    def gi_dict(gi_id: int) -> dict[str, Any]:
        gi = instances[gi_id]
        return {
            "gi_id": gi.id,
            "profile_id": gi.profile_id,
            "profile": format_counts(layout_counts(gpu, [gi_spec(gi)])),
            "placement": _placement_dict(gi.placement),
            "busy": gi.busy,
        }

    def create_dict(create: GiCreate) -> dict[str, Any]:
        profile = gpu.profile_by_id(create.profile_id)
        return {
            "profile_id": create.profile_id,
            "profile": profile_label(gpu, create.profile_id),
            "placement": _placement_dict(create.placement),
            "cis": [
                {
                    "profile_id": ci.profile_id,
                    "profile": _ci_name(profile, ci.profile_id) if profile else str(ci.profile_id),
                    "placement": _placement_dict(ci.placement),
                }
                for ci in create.cis
            ],
        }

    return {
        "gpu": plan.index,
        "uuid": gpu.uuid,
        "name": gpu.name,
        "current": {
            "mig_enabled": gpu.mig_enabled,
            "mig_pending": gpu.mig_pending,
            "layout": [list(pair) for pair in observed_layout(gpu)],
        },
        "desired": {
            "mig_enabled": plan.desired.mig_enabled,
            "layout": [list(pair) for pair in layout_counts(gpu, plan.desired.instances)]
            if plan.desired.mig_enabled
            else [],
        },
        "noop": plan.noop,
        "set_mode": plan.set_mode,
        "activate_mode": plan.activate_mode,
        "keep": [gi_dict(i) for i in plan.keep],
        "destroy": [gi_dict(d.gi_id) for d in plan.destroy],
        "create": [create_dict(c) for c in plan.create],
        "blocked": [
            {"gi_id": b.gi_id, "profile": b.profile, "pids": list(b.pids), "reason": b.reason}
            for b in plan.blocked
        ],
    }


def format_plan(plans: Sequence[GpuPlan], snapshot: NodeSnapshot) -> str:
    """Readable text for ``migd plan``: one block per GPU of the node, by index."""
    by_index = {p.index: p for p in plans}
    lines: list[str] = []
    for gpu in sorted(snapshot.gpus, key=lambda g: g.index):
        head = f"GPU {gpu.index} {gpu.name} ({gpu.bus_id})"
        plan = by_index.get(gpu.index)
        if not gpu.readable:
            lines.append(f"GPU {gpu.index}: {gpu.unreadable_reason}; nothing can be planned on it")
            continue
        if plan is None:
            lines.append(f"{head}: {describe_current(gpu)}; not covered by the config, left alone")
            continue
        want = describe(gpu, plan.desired)
        if plan.noop:
            lines.append(f"{head}: {want}; nothing to do")
            continue
        lines.append(f"{head}: {describe_current(gpu)} -> {want}")
        instances = {gi.id: gi for gi in gpu.instances}
        for blocker in plan.blocked:
            lines.append(f"  BLOCKED  {blocker.reason}")
        if plan.set_mode is not None:
            lines.append(f"  set MIG mode {'on' if plan.set_mode else 'off'}")
        if plan.activate_mode:
            lines.append("  activate the mode change (a GPU reset may be needed)")
        for gi_id in plan.keep:
            gi = instances[gi_id]
            held = format_counts(layout_counts(gpu, [gi_spec(gi)]))
            lines.append(f"  keep     GI {gi_id} {held} at {gi.placement}")
        for d in plan.destroy:
            gi = instances[d.gi_id]
            held = format_counts(layout_counts(gpu, [gi_spec(gi)]))
            busy = " (busy)" if gi.busy else ""
            lines.append(f"  destroy  GI {d.gi_id} {held} at {gi.placement}{busy}")
        for c in plan.create:
            profile = gpu.profile_by_id(c.profile_id)
            cis = ", ".join(
                f"{_ci_name(profile, ci.profile_id) if profile else ci.profile_id} "
                f"at {ci.placement}"
                for ci in c.cis
            )
            lines.append(
                f"  create   {profile_label(gpu, c.profile_id)} at {c.placement} with CI {cis}"
            )
    return "\n".join(lines)
