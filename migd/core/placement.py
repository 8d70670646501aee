"""Where instances go: the exact placement search, and the rules a set of instances obeys.

Pure: no NVML, no I/O, no clock.

A GPU instance (GI) occupies ``[start, start+size)`` on the GPU's memory-slice axis at
one of its profile's possible placements; a compute instance (CI) occupies a span of
its GI's compute axis at one of its CI profile's placements. Besides overlap, a set of
instances must respect rules that depend only on *which* instances they are, not
where they sit (:func:`_gi_count_problem`, :func:`_ci_count_problem`): per-profile
instance counts, the compute-slice budget (7 on an 8-slot GPU, a GI's own slice count
inside it) and the media-engine limit. The axes are tiny (8 units, 12 on RTX PRO
6000), so the search is exact: kinds are placed one after another, each kind's copies
as one combination of disjoint placements, memoised on (kind, occupied mask). It finds
an arrangement whenever one exists, and always the same one for the same input.

Selection asks it whether a wanted layout fits a GPU at all (:func:`layout_problem`);
the planner asks it where the new instances go beside the kept ones; the metrics ask
how many more instances of a profile fit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from migd.core.layout import GiProfile, GiSpec, GpuState, Placement
from migd.core.names import ci_name
from migd.core.plan import CiCreate
from migd.core.profiles import ProfileName, ProfileNameError

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
        ci = gi.ci_profile(ci_id)
        if ci is None:
            return f"{gi.name} offers no compute-instance profile id {ci_id}"
        if count > ci.instance_count:
            return f"{count}× {ci.name} wanted in one {gi.name}, at most {ci.instance_count} fit"
        used += ci.slice_count * count
    if used > gi.slice_count:
        return f"the compute instances need {used} slices, a {gi.name} has {gi.slice_count}"
    return None


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
            names = "+".join(ci_name(profile, ci) for ci in spec.ci_profile_ids)
            return f"the compute instances {names} do not fit one {profile.name} together"
    problem = _gi_count_problem(gpu, Counter(s.profile_id for s in specs))
    if problem is not None:
        return problem
    if arrange_specs(gpu, specs, occupied) is None:
        beside = " beside the occupied ones" if occupied else ""
        return (
            f"no arrangement of these instances fits the GPU's {gpu.slot_count} memory slices"
            + beside
        )
    return None


def arrange_specs(
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
