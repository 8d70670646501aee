"""Every layout a GPU can hold, by plain enumeration: the MIG rules restated plainly.

An oracle, deliberately sharing no code with migd's planner: it restates the rules of
reference/nvml.md ("Semantics a simulator must reproduce") in the simplest way, so the
planner's exact search can be checked against an independent statement of them
(tests/test_planner_enumeration.py), and the benchmarks (bench/) can walk every layout
a GPU can hold — 127 non-empty GI-profile multisets on an H200. Test code: the
benchmarks find it on the path ``bench/__init__.py`` gives them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from migd.core.layout import GpuState, Placement

__all__ = ["feasible_multisets", "placeable", "rules_ok"]


def _span(p: Placement) -> set[int]:
    return set(range(p.start, p.start + p.size))


def rules_ok(gpu_state: GpuState, profile_ids: Sequence[int]) -> bool:
    """Instance counts, compute slices and media engines of a multiset of GI profiles."""
    profiles = [gpu_state.profile_by_id(pid) for pid in profile_ids]
    if any(p is None for p in profiles):
        return False
    for pid, n in Counter(profile_ids).items():
        if n > gpu_state.profile_by_id(pid).instance_count:  # type: ignore[union-attr]
            return False
    total = max(p.slice_count for p in gpu_state.profiles)
    if sum(p.slice_count for p in profiles) > total:  # type: ignore[union-attr]
        return False
    names = [p.name for p in profiles]  # type: ignore[union-attr]
    me = [n for n in names if n.endswith("+me")]
    me_all = [n for n in names if n.endswith("+me.all")]
    if len(me) + len(me_all) > 1:
        return False
    return not (me_all and any(not n.endswith("-me") for n in names if n not in me_all))


def placeable(
    gpu_state: GpuState, profile_ids: Sequence[int], fixed: Iterable[Placement] = ()
) -> bool:
    """Whether GIs of ``profile_ids`` fit beside ``fixed`` without overlap (plain DFS)."""
    used: set[int] = set()
    for p in fixed:
        used |= _span(p)
    ids = sorted(profile_ids)

    def rec(i: int, used: set[int], lowest: int) -> bool:
        if i == len(ids):
            return True
        placements = gpu_state.profile_by_id(ids[i]).placements  # type: ignore[union-attr]
        for j, p in enumerate(placements):
            if j < lowest or _span(p) & used:
                continue
            same_next = i + 1 < len(ids) and ids[i + 1] == ids[i]
            if rec(i + 1, used | _span(p), j + 1 if same_next else 0):
                return True
        return False

    return rec(0, used, 0)


def feasible_multisets(gpu_state: GpuState) -> set[tuple[int, ...]]:
    """Every GI-profile multiset (sorted ids, the empty one included) the GPU can hold."""
    profiles = sorted(gpu_state.profiles, key=lambda p: p.id)
    found: set[tuple[int, ...]] = set()

    def rec(i: int, used: set[int], chosen: list[int]) -> None:
        if not rules_ok(gpu_state, chosen):
            return
        found.add(tuple(sorted(chosen)))
        for j in range(i, len(profiles)):
            for p in profiles[j].placements:
                if not _span(p) & used:
                    rec(j, used | _span(p), [*chosen, profiles[j].id])

    rec(0, set(), [])
    return found
