"""Every layout a GPU can hold is placeable from empty, and nothing else is accepted.

The set of feasible layouts comes from the oracle in ``tests/feasible.py`` (a plain
search that shares no code with the planner, shared with the benchmarks), so the
planner is checked against an independent statement of the MIG rules.
"""

from __future__ import annotations

from collections import Counter

import pytest
from feasible import feasible_multisets
from planning_support import (
    A30,
    A100_40GB,
    H200,
    RTX_PRO,
    apply_plan,
    bounded_multisets,
    desired_of,
    full_spec,
    gpu,
)

from migd.core.compare import layout_matches
from migd.core.placement import layout_problem
from migd.core.planner import plan_gpu
from migd.errors import InvalidRequest


def _specs(gpu_state, ids):
    return [full_spec(gpu_state.profile_by_id(pid)) for pid in ids]


def test_h200_has_127_feasible_gi_multisets() -> None:
    """The issue's count, and exactly how it is counted.

    Counted: non-empty multisets of GPU-instance profiles (each GI with its full CI)
    over all seven profiles the real H200 reports — 1g.18gb, 1g.18gb+me, 1g.35gb,
    2g.35gb, 3g.71gb, 4g.71gb, 7g.141gb — that fit together: placements disjoint on
    the 8 memory slices, at most instanceCount of each profile, at most 7 compute
    slices, at most one +me. 127 of them; 128 with the empty layout. Without the +me
    profile it would be 77 (78 with the empty layout).
    """
    h200 = gpu(H200)
    assert sorted(p.name for p in h200.profiles) == [
        "1g.18gb",
        "1g.18gb+me",
        "1g.35gb",
        "2g.35gb",
        "3g.71gb",
        "4g.71gb",
        "7g.141gb",
    ]
    feasible = feasible_multisets(h200)
    assert () in feasible
    assert len(feasible - {()}) == 127
    me = h200.profile_by_id(20)
    assert me is not None and me.name == "1g.18gb+me"
    assert len({m for m in feasible if me.id not in m} - {()}) == 77


@pytest.mark.parametrize("key", [H200, A100_40GB, A30, RTX_PRO])
def test_every_feasible_layout_is_placed_from_empty(key: str) -> None:
    """One GiCreate per GI, explicit placements, and the result holds exactly the layout."""
    blank = gpu(key)
    feasible = feasible_multisets(blank)
    for ids in sorted(feasible):
        desired = desired_of(blank, _specs(blank, ids))
        plan = plan_gpu(blank, desired)
        assert not plan.destroy_gis and not plan.keep and not plan.blockers
        assert plan.set_mode is None and not plan.activate_mode
        assert len(plan.create_gis) == len(ids)
        assert Counter(c.profile_id for c in plan.create_gis) == Counter(ids)
        assert plan.noop == (not ids)
        final = apply_plan(blank, plan)
        assert layout_matches(final, desired)
        assert plan_gpu(final, desired).noop


@pytest.mark.parametrize("key", [H200, A100_40GB, A30, RTX_PRO])
def test_every_infeasible_layout_is_refused(key: str) -> None:
    blank = gpu(key)
    feasible = feasible_multisets(blank)
    refused = 0
    for ids in bounded_multisets(blank):
        problem = layout_problem(blank, _specs(blank, ids))
        assert (problem is None) == (ids in feasible), (ids, problem)
        if problem is not None:
            refused += 1
            with pytest.raises(InvalidRequest, match=f"GPU {blank.index}"):
                plan_gpu(blank, desired_of(blank, _specs(blank, ids)))
    assert refused > 0
