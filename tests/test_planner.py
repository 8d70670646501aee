"""The planner: keep what can be kept, never destroy work, explicit placements, modes."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from planning_support import (
    A30,
    A100_40GB,
    H200,
    RTX_PRO,
    apply_plan,
    best_keep,
    desired_of,
    feasible_multisets,
    full_spec,
    gpu,
    l40s,
    neighbour_desired,
    profile_named,
    random_desired,
    random_state,
)

from migd.core.checkpoint import Checkpoint, GpuRecord, capture_gpu
from migd.core.compare import layout_matches
from migd.core.layout import (
    ComputeInstance,
    DesiredGpu,
    GiSpec,
    GpuInstance,
    GpuState,
    NodeSnapshot,
    Placement,
)
from migd.core.names import observed_layout
from migd.core.plan import (
    Action,
    Blocker,
    CiCreate,
    GiCreate,
    GpuPlan,
    format_plan,
    plan_to_dict,
)
from migd.core.planner import plan_gpu, plan_node
from migd.errors import InvalidRequest


def _spec(g: GpuState, name: str) -> GiSpec:
    return full_spec(profile_named(g, name))


def _gi(g: GpuState, gi_id: int, name: str, start: int, pids: tuple[int, ...] = ()) -> GpuInstance:
    """An existing GI of profile ``name`` at ``start`` holding its full CI."""
    profile = profile_named(g, name)
    full = profile.full_ci()
    assert full is not None
    placement = next(p for p in profile.placements if p.start == start)
    ci = ComputeInstance(0, full.id, full.placements[0], pids)
    return GpuInstance(gi_id, profile.id, placement, (ci,))


def _holding(g: GpuState, *instances: GpuInstance) -> GpuState:
    return replace(g, instances=tuple(instances))


# ---------------------------------------------------------------------------
# Keeping, blocking, forcing
# ---------------------------------------------------------------------------


def test_matching_instances_are_kept_and_the_rest_is_placed_around_them() -> None:
    h200 = gpu(H200)
    current = _holding(h200, _gi(h200, 2, "3g.71gb", 4), _gi(h200, 7, "1g.18gb", 0))
    desired = desired_of(h200, [_spec(h200, "3g.71gb"), _spec(h200, "2g.35gb")])
    plan = plan_gpu(current, desired)
    assert plan.keep == (2,)
    assert plan.destroy_gis == (7,)
    assert [(c.profile_id, c.placement) for c in plan.create_gis] == [(14, Placement(0, 2))]
    assert not plan.blockers and not plan.noop
    apply_plan(current, plan)


def test_busy_instance_is_kept_when_a_packing_holds_it() -> None:
    h200 = gpu(H200)
    # 3g + 2g + 2g fits only as 2g@0, 2g@2, 3g@4: the busy 3g at 4:4 can stay.
    current = _holding(h200, _gi(h200, 1, "3g.71gb", 0), _gi(h200, 2, "3g.71gb", 4, pids=(4242,)))
    desired = desired_of(h200, [_spec(h200, "3g.71gb")] + [_spec(h200, "2g.35gb")] * 2)
    plan = plan_gpu(current, desired)
    assert plan.keep == (2,)
    assert plan.destroy_gis == (1,)
    assert not plan.blockers
    final = apply_plan(current, plan)
    assert any(gi.id == 2 and gi.busy for gi in final.instances)


def test_busy_instance_that_no_packing_holds_blocks_the_gpu() -> None:
    h200 = gpu(H200)
    current = _holding(
        h200, _gi(h200, 1, "3g.71gb", 0, pids=(4242, 4243)), _gi(h200, 2, "3g.71gb", 4)
    )
    desired = desired_of(h200, [_spec(h200, "3g.71gb")] + [_spec(h200, "2g.35gb")] * 2)
    plan = plan_gpu(current, desired)
    assert plan.keep == (2,)  # the idle one is the one that fits
    assert plan.blockers == (
        Blocker(
            gi_id=1,
            profile="3g.71gb",
            pids=(4242, 4243),
            reason=plan.blockers[0].reason,
        ),
    )
    reason = plan.blockers[0].reason
    assert "GI 1" in reason and "3g.71gb" in reason and "4242, 4243" in reason
    assert "cannot be placed around it" in reason
    assert not plan.noop
    forced = plan_gpu(current, desired, force=True)
    assert not forced.blockers
    assert 1 in forced.destroy_gis
    apply_plan(current, forced, force=True)


def test_busy_instance_with_other_compute_instances_blocks() -> None:
    h200 = gpu(H200)
    profile = profile_named(h200, "2g.35gb")
    one_c = next(ci for ci in profile.ci_profiles if ci.name == "1c.2g.35gb")
    split = GpuInstance(
        3,
        profile.id,
        Placement(0, 2),
        (
            ComputeInstance(0, one_c.id, Placement(0, 1), (77,)),
            ComputeInstance(1, one_c.id, Placement(1, 1)),
        ),
    )
    current = _holding(h200, split)
    plan = plan_gpu(current, desired_of(h200, [_spec(h200, "2g.35gb")]))
    assert [b.gi_id for b in plan.blockers] == [3]
    assert plan.blockers[0].pids == (77,)
    assert "compute instances" in plan.blockers[0].reason
    assert "1c.2g.35gb×2" in plan.blockers[0].reason


def test_busy_instance_not_in_the_layout_blocks_and_names_why() -> None:
    h200 = gpu(H200)
    current = _holding(h200, _gi(h200, 0, "7g.141gb", 0, pids=(9,)))
    plan = plan_gpu(current, desired_of(h200, [_spec(h200, "1g.18gb")] * 7))
    assert [(b.gi_id, b.profile, b.pids) for b in plan.blockers] == [(0, "7g.141gb", (9,))]
    assert "not in the desired layout" in plan.blockers[0].reason


def test_more_busy_instances_than_wanted_keeps_as_many_as_wanted() -> None:
    h200 = gpu(H200)
    current = _holding(
        h200,
        _gi(h200, 7, "1g.18gb", 0, pids=(1,)),
        _gi(h200, 8, "1g.18gb", 1, pids=(2,)),
        _gi(h200, 9, "1g.18gb", 2),
    )
    plan = plan_gpu(current, desired_of(h200, [_spec(h200, "1g.18gb")]))
    assert plan.keep == (7,)  # busy first, then the lowest id
    assert [b.gi_id for b in plan.blockers] == [8]


def test_busy_instances_are_preferred_over_a_larger_idle_keep_set() -> None:
    h200 = gpu(H200)
    # 3g + 1g×3 fits as 3g@4 + 1g at three of 0-3, or 3g@0 + 1g at 4, 5, 6. Keeping
    # the three idle 1g at 0-2 would keep more, but the busy one at 4 comes first.
    current = _holding(
        h200,
        _gi(h200, 7, "1g.18gb", 0),
        _gi(h200, 8, "1g.18gb", 1),
        _gi(h200, 9, "1g.18gb", 2),
        _gi(h200, 11, "1g.18gb", 4, pids=(8,)),
    )
    desired = desired_of(h200, [_spec(h200, "3g.71gb")] + [_spec(h200, "1g.18gb")] * 3)
    plan = plan_gpu(current, desired)
    assert plan.keep == (11,)
    assert plan.destroy_gis == (7, 8, 9)
    assert not plan.blockers
    assert sorted((c.profile_id, c.placement.start) for c in plan.create_gis) == [
        (9, 0),
        (19, 5),
        (19, 6),
    ]
    apply_plan(current, plan)


# ---------------------------------------------------------------------------
# Random transitions against the brute-force oracle
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", [H200, A100_40GB, A30, RTX_PRO])
@pytest.mark.parametrize("seed", range(4))
def test_random_transitions(key: str, seed: int) -> None:
    """Plans between random layouts: maximal keep-set, busy never destroyed, valid steps."""
    rng = random.Random(f"{key}-{seed}")
    blank = gpu(key)
    feasible = sorted(feasible_multisets(blank))
    for step in range(40):
        current = random_state(blank, rng, feasible, busy=0.3 if seed % 2 else 0.0)
        if step % 2:
            desired = random_desired(blank, rng, feasible)
        else:
            desired = neighbour_desired(current, rng, feasible)
        plan = plan_gpu(current, desired)
        busy_total = sum(gi.busy for gi in current.instances)
        kept = [gi for gi in current.instances if gi.id in plan.keep]
        assert (sum(gi.busy for gi in kept), len(kept)) == best_keep(current, desired)
        assert sorted(plan.keep + plan.destroy_gis) == sorted(gi.id for gi in current.instances)
        if sum(gi.busy for gi in kept) == busy_total:
            assert not plan.blockers
            final = apply_plan(current, plan)
            assert plan_gpu(final, desired).noop
        else:
            blocked = {b.gi_id for b in plan.blockers}
            assert blocked == {gi.id for gi in current.instances if gi.busy and gi not in kept}
            forced = plan_gpu(current, desired, force=True)
            assert forced.keep == plan.keep and not forced.blockers
            apply_plan(current, forced, force=True)


def test_shared_instances_survive_a_transition() -> None:
    """From 1g×4 + 3g to 1g×2 + 2g + 3g: the 3g and two 1g stay where they are."""
    h200 = gpu(H200)
    current = _holding(
        h200,
        _gi(h200, 7, "1g.18gb", 0),
        _gi(h200, 8, "1g.18gb", 1),
        _gi(h200, 9, "1g.18gb", 2),
        _gi(h200, 10, "1g.18gb", 3),
        _gi(h200, 2, "3g.71gb", 4, pids=(1,)),
    )
    desired = desired_of(
        h200,
        [_spec(h200, "1g.18gb")] * 2 + [_spec(h200, "2g.35gb"), _spec(h200, "3g.71gb")],
    )
    plan = plan_gpu(current, desired)
    assert plan.keep == (2, 7, 8)
    assert plan.destroy_gis == (9, 10)
    assert [(c.profile_id, c.placement) for c in plan.create_gis] == [(14, Placement(2, 2))]
    apply_plan(current, plan)


# ---------------------------------------------------------------------------
# Determinism, modes, compute instances
# ---------------------------------------------------------------------------


def test_same_inputs_give_the_same_plan_whatever_their_order() -> None:
    rng = random.Random(7)
    blank = gpu(H200)
    feasible = sorted(feasible_multisets(blank))
    for _ in range(30):
        current = random_state(blank, rng, feasible, busy=0.2)
        desired = random_desired(blank, rng, feasible)
        plan = plan_gpu(current, desired)
        assert plan_gpu(current, desired) == plan
        shuffled = list(current.instances)
        rng.shuffle(shuffled)
        profiles = list(current.profiles)
        rng.shuffle(profiles)
        permuted = replace(current, instances=tuple(shuffled), profiles=tuple(profiles))
        # Every decision is the same (the plan also carries the GPU as given).
        assert replace(plan_gpu(permuted, desired), gpu=current) == plan


def test_disable_destroys_everything_then_sets_the_mode() -> None:
    h200 = gpu(H200)
    current = _holding(h200, _gi(h200, 1, "3g.71gb", 0), _gi(h200, 2, "3g.71gb", 4))
    plan = plan_gpu(current, DesiredGpu(0, False))
    assert plan.destroy_gis == (1, 2)
    assert plan.create_gis == () and plan.keep == ()
    assert plan.set_mode is False and plan.activate_mode
    final = apply_plan(current, plan)
    assert not final.mig_enabled and not final.instances
    assert plan_gpu(final, DesiredGpu(0, False)).noop


def test_disable_with_a_busy_instance_is_blocked_unless_forced() -> None:
    h200 = gpu(H200)
    current = _holding(h200, _gi(h200, 1, "3g.71gb", 0, pids=(31,)), _gi(h200, 2, "3g.71gb", 4))
    plan = plan_gpu(current, DesiredGpu(0, False))
    assert [(b.gi_id, b.pids) for b in plan.blockers] == [(1, (31,))]
    assert "MIG is to be disabled" in plan.blockers[0].reason
    forced = plan_gpu(current, DesiredGpu(0, False), force=True)
    assert not forced.blockers
    apply_plan(current, forced, force=True)


def test_enable_from_mig_off_sets_the_mode_then_creates_on_the_empty_axis() -> None:
    off = gpu(H200, mig_enabled=False)
    desired = desired_of(off, [_spec(off, "3g.71gb")] * 2)
    plan = plan_gpu(off, desired)
    assert plan.set_mode is True and plan.activate_mode
    assert [c.placement for c in plan.create_gis] == [Placement(0, 4), Placement(4, 4)]
    final = apply_plan(off, plan)
    assert final.mig_enabled and layout_matches(final, desired)


def test_pending_modes() -> None:
    h200 = gpu(H200)
    # Enabled, but a disable is pending (Ampere waits for a reset): ask for on again.
    pending_off = replace(h200, mig_pending=False)
    plan = plan_gpu(pending_off, DesiredGpu(0, True))
    assert plan.set_mode is True and not plan.activate_mode and not plan.noop
    # Off, an enable already pending: nothing to request, only to activate.
    pending_on = replace(gpu(H200, mig_enabled=False), mig_pending=True)
    plan = plan_gpu(pending_on, DesiredGpu(0, True))
    assert plan.set_mode is None and plan.activate_mode and not plan.noop
    # Off and wanted off: nothing at all.
    assert plan_gpu(gpu(H200, mig_enabled=False), DesiredGpu(0, False)).noop
    assert not layout_matches(pending_off, DesiredGpu(0, True))


def test_gpu_without_mig() -> None:
    assert plan_gpu(l40s(1), DesiredGpu(1, False)).noop
    assert layout_matches(l40s(1), DesiredGpu(1, False))
    with pytest.raises(InvalidRequest, match="not MIG-capable"):
        plan_gpu(l40s(1), DesiredGpu(1, True))


def test_compute_instances_get_explicit_placements_inside_their_gi() -> None:
    h200 = gpu(H200)
    three_g = profile_named(h200, "3g.71gb")
    ids = {ci.name: ci.id for ci in three_g.ci_profiles}
    spec = GiSpec(three_g.id, tuple(sorted((ids["1c.3g.71gb"], ids["2c.3g.71gb"]))))
    plan = plan_gpu(h200, desired_of(h200, [spec]))
    (create,) = plan.create_gis
    assert isinstance(create, GiCreate)
    placed = {ci.profile_id: ci.placement for ci in create.cis}
    assert placed == {ids["2c.3g.71gb"]: Placement(0, 2), ids["1c.3g.71gb"]: Placement(2, 1)}
    apply_plan(h200, plan)


def test_the_double_memory_1g_gets_its_own_full_ci() -> None:
    h200 = gpu(H200)
    spec = _spec(h200, "1g.35gb")
    assert spec.ci_profile_ids == (7,)  # CI index 7 (26 SMs), not the 16-SM plain 1c
    plan = plan_gpu(h200, desired_of(h200, [spec] * 4))
    assert [c.cis[0].placement for c in plan.create_gis] == [Placement(0, 2)] * 4
    apply_plan(h200, plan)


def test_a_layout_the_gpu_cannot_hold_is_refused() -> None:
    h200 = gpu(H200)
    full = desired_of(h200, [_spec(h200, "4g.71gb"), _spec(h200, "3g.71gb")])
    plan_gpu(h200, full)  # 4g + 3g fits
    with pytest.raises(InvalidRequest, match="compute slices"):
        plan_gpu(h200, desired_of(h200, [*full.instances, _spec(h200, "1g.18gb")]))
    with pytest.raises(InvalidRequest, match=r"\+me"):
        plan_gpu(h200, desired_of(h200, [_spec(h200, "1g.18gb+me")] * 2))


# ---------------------------------------------------------------------------
# Observed layouts, node plans, output
# ---------------------------------------------------------------------------


def test_observed_layout_names_whole_gis_and_partial_cis() -> None:
    h200 = gpu(H200)
    two_g = profile_named(h200, "2g.35gb")
    one_c = next(ci for ci in two_g.ci_profiles if ci.name == "1c.2g.35gb")
    split = GpuInstance(
        4,
        two_g.id,
        Placement(2, 2),
        (
            ComputeInstance(0, one_c.id, Placement(0, 1)),
            ComputeInstance(1, one_c.id, Placement(1, 1)),
        ),
    )
    current = _holding(
        h200,
        _gi(h200, 7, "1g.18gb", 0),
        _gi(h200, 8, "1g.18gb", 1),
        split,
        _gi(h200, 2, "3g.71gb", 4),
    )
    assert observed_layout(current) == (
        ("1g.18gb", 2),
        ("1c.2g.35gb", 2),
        ("3g.71gb", 1),
    )
    assert observed_layout(gpu(H200, mig_enabled=False)) == ()


def test_plan_node_plans_desired_gpus_in_index_order_and_leaves_the_others_alone() -> None:
    a, b, c = gpu(H200, 0), gpu(H200, 1), gpu(H200, 2)
    snapshot = NodeSnapshot((c, a, b))
    plan = plan_node(snapshot, [DesiredGpu(2, True), DesiredGpu(0, False)])
    assert [p.index for p in plan.gpus] == [0, 2, 1]
    assert [p.index for p in plan.gpus if p.target is not None] == [0, 2]
    assert plan.gpu(1).action is Action.SKIPPED
    assert plan.gpu(1).reason == "not covered by the selected config"
    assert [d.index for d in plan.desired] == [0, 2]
    with pytest.raises(InvalidRequest, match="GPU 5"):
        plan_node(snapshot, [DesiredGpu(5, True)])


def test_format_and_dict() -> None:
    h200 = gpu(H200, 0)
    busy = _holding(gpu(H200, 1), _gi(h200, 1, "3g.71gb", 0, pids=(4242,)))
    other = l40s(2)
    snapshot = NodeSnapshot((h200, busy, other))
    desired = [
        desired_of(h200, [_spec(h200, "1g.18gb")] * 2 + [_spec(h200, "3g.71gb")]),
        DesiredGpu(1, True, (_spec(h200, "7g.141gb"),)),
    ]
    plan = plan_node(snapshot, desired)
    text = format_plan(plan)
    assert "GPU 0 NVIDIA H200" in text
    assert "-> 1g.18gb×2+3g.71gb" in text
    assert "create   3g.71gb at 0:4 with CI 3g.71gb at 0:4" in text
    assert "BLOCKED  GI 1 (3g.71gb at 0:4) runs pid(s) 4242" in text
    assert "GPU 2 NVIDIA L40S" in text and "left alone" in text
    assert plan.gpu(1).action is Action.BLOCKED and plan.gpu(2).action is Action.SKIPPED
    data = [plan_to_dict(p) for p in plan.gpus if p.target is not None]
    json.dumps(data)  # JSON-ready
    assert data[0]["desired"]["layout"] == [["1g.18gb", 2], ["3g.71gb", 1]]
    assert data[0]["create"][0]["placement"] == {"start": 0, "size": 4}
    assert data[1]["blocked"][0]["pids"] == [4242]
    assert data[1]["destroy"][0]["busy"] is True
    done = apply_plan(h200, plan.gpu(0))
    assert "nothing to do" in format_plan(plan_node(NodeSnapshot((done,)), desired[:1]))


def test_noop_plan() -> None:
    h200 = gpu(H200)
    current = _holding(h200, _gi(h200, 1, "3g.71gb", 0, pids=(1,)), _gi(h200, 2, "3g.71gb", 4))
    plan = plan_gpu(current, desired_of(h200, [_spec(h200, "3g.71gb")] * 2))
    assert plan == GpuPlan(current, Action.NOOP, plan.target, keep=(1, 2))
    assert plan.noop


def test_forced_destroys_start_with_the_busy_instances() -> None:
    h200 = gpu(H200)
    current = _holding(
        h200,
        _gi(h200, 3, "2g.35gb", 0),
        _gi(h200, 4, "2g.35gb", 2, pids=(12,)),
        _gi(h200, 2, "3g.71gb", 4),
    )
    plan = plan_gpu(current, desired_of(h200, [_spec(h200, "7g.141gb")]), force=True)
    assert plan.destroy_gis == (4, 2, 3)
    apply_plan(current, plan, force=True)


# ---------------------------------------------------------------------------
# Towards a checkpoint (restore, and putting a failed GPU back)
# ---------------------------------------------------------------------------

THREE = GpuInstance(
    2,
    9,
    Placement(4, 4),
    (ComputeInstance(0, 0, Placement(0, 1)), ComputeInstance(1, 0, Placement(1, 1), (42,))),
)
SMALL = GpuInstance(7, 19, Placement(0, 1), (ComputeInstance(0, 0, Placement(0, 1)),))


def _h200(instances=(), enabled=True):  # type: ignore[no-untyped-def]
    return replace(gpu(H200, 0, mig_enabled=enabled), instances=tuple(instances))


def _restore(current: GpuState, record: GpuRecord, force: bool = False) -> GpuPlan:
    return plan_node(NodeSnapshot((current,)), Checkpoint((record,)), force=force).gpu(0)


def test_a_plan_towards_a_checkpoint_keeps_what_matches_and_fixes_the_rest() -> None:
    record = capture_gpu(_h200([THREE, SMALL]))
    # Now: the 3g lost a CI and a 2g sits where the 1g was.
    two = GpuInstance(3, 14, Placement(0, 2), (ComputeInstance(0, 1, Placement(0, 2)),))
    trimmed = replace(THREE, compute_instances=THREE.compute_instances[:1])
    plan = _restore(_h200([trimmed, two]), record)
    assert plan.action is Action.CHANGE and plan.exact == record
    assert plan.keep == (2,)
    assert plan.destroy_cis == ((3, 0),)
    assert plan.destroy_gis == (3,)
    assert plan.create_cis == ((2, CiCreate(0, Placement(1, 1))),)
    assert plan.create_gis == (GiCreate(19, Placement(0, 1), (CiCreate(0, Placement(0, 1)),)),)
    assert plan.set_mode is None and not plan.activate_mode and plan.blockers == ()
    assert _restore(_h200([THREE, SMALL]), record).action is Action.NOOP


def test_a_plan_towards_a_checkpoint_names_busy_instances_and_mode_changes() -> None:
    record = GpuRecord(0, _h200().uuid, mig_enabled=False)
    plan = _restore(_h200([THREE]), record)
    assert plan.set_mode is False and plan.activate_mode
    assert plan.destroy_gis == (2,)
    assert [(b.gi_id, b.pids) for b in plan.blockers] == [(2, (42,))]
    assert plan.action is Action.BLOCKED
    assert plan.reason == "restoring would destroy busy instances: GI 2 (pid 42) (force overrides)"
    assert _restore(_h200([THREE]), record, force=True).action is Action.CHANGE
    pending = replace(_h200(enabled=False), mig_pending=True)
    assert _restore(pending, record).set_mode is False  # a pending change is withdrawn
    assert Checkpoint((record,)).by_uuid(record.uuid) is record


def test_a_checkpoint_naming_a_gpu_the_node_lacks_is_refused_before_anything() -> None:
    record = GpuRecord(0, "GPU-elsewhere", mig_enabled=False)
    with pytest.raises(InvalidRequest, match="GPU-elsewhere"):
        plan_node(NodeSnapshot((_h200(),)), Checkpoint((record,)))
