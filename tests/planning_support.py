"""Test support for selection and planning: GPU tables, an independent oracle, a plan applier.

The oracle and the applier deliberately share no code with ``migd.core.planner``: they
restate the MIG rules (reference/nvml.md "Semantics a simulator must reproduce") in
the plainest way, so a planner bug cannot hide behind the same bug in its checker.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace

from feasible import feasible_multisets as feasible_multisets  # re-exported for the tests
from feasible import placeable, rules_ok

from migd.core.gpu_models import blank_gpu
from migd.core.layout import (
    ComputeInstance,
    DesiredGpu,
    GiProfile,
    GiSpec,
    GpuInstance,
    GpuState,
    Placement,
    gi_spec,
)
from migd.core.placement import place_cis
from migd.core.plan import GpuPlan
from migd.formats.gpu_models import load_model

H200 = "H200-SXM-141GB"
A100_40GB = "A100-SXM4-40GB"
A30 = "A30-24GB"
RTX_PRO = "RTX-PRO-6000-Blackwell-96GB"
L40S = "L40S-48GB"  # no MIG


def gpu(key: str, index: int = 0, mig_enabled: bool = True) -> GpuState:
    """A GPU of the simulator's model ``key`` at NVML ``index``, holding nothing."""
    return blank_gpu(load_model(key), index=index, mig_enabled=mig_enabled)


def l40s(index: int) -> GpuState:
    """A GPU without MIG (reference/nvml.md "A GPU without MIG")."""
    return gpu(L40S, index)


def profile_named(gpu_state: GpuState, name: str) -> GiProfile:
    return next(p for p in gpu_state.profiles if p.name == name)


def full_spec(profile: GiProfile) -> GiSpec:
    full = profile.full_ci()
    assert full is not None
    return GiSpec(profile.id, (full.id,))


def desired_of(gpu_state: GpuState, specs: Iterable[GiSpec], enabled: bool = True) -> DesiredGpu:
    return DesiredGpu(gpu_state.index, enabled, tuple(sorted(specs)))


# ---------------------------------------------------------------------------
# The oracle: MIG rules restated plainly (rules_ok, placeable and
# feasible_multisets live in feasible.py, shared with the benchmarks)
# ---------------------------------------------------------------------------


def _span(p: Placement) -> set[int]:
    return set(range(p.start, p.start + p.size))


def bounded_multisets(gpu_state: GpuState) -> Iterable[tuple[int, ...]]:
    """Every multiset up to one compute slice and one instance beyond the GPU's limits.

    That covers every feasible layout and every way of just missing one, without
    the millions of hopeless ones (RTX PRO 6000 has eleven profiles).
    """
    profiles = sorted(gpu_state.profiles, key=lambda p: p.id)
    budget = max(p.slice_count for p in profiles) + 1

    def rec(i: int, left: int, chosen: tuple[int, ...]) -> Iterable[tuple[int, ...]]:
        if i == len(profiles):
            yield chosen
            return
        p = profiles[i]
        for n in range(min(p.instance_count + 1, left // p.slice_count) + 1):
            yield from rec(i + 1, left - n * p.slice_count, chosen + (p.id,) * n)

    for ids in rec(0, budget, ()):
        yield tuple(sorted(ids))


def spec_options(gpu_state: GpuState) -> dict[int, list[GiSpec]]:
    """Per GI profile: its full-CI spec and a few partial-CI specs that fit one GI."""
    options: dict[int, list[GiSpec]] = {}
    for profile in gpu_state.profiles:
        specs = [full_spec(profile)]
        full = profile.full_ci()
        for ci in profile.ci_profiles:
            if ci is full:
                continue
            for k in range(1, min(ci.instance_count, 2) + 1):
                if k * ci.slice_count > profile.slice_count:
                    continue
                if any(
                    all(not _span(a) & _span(b) for a, b in itertools.combinations(combo, 2))
                    for combo in itertools.combinations(ci.placements, k)
                ):
                    specs.append(GiSpec(profile.id, (ci.id,) * k))
        options[profile.id] = specs
    return options


def best_keep(gpu_state: GpuState, desired: DesiredGpu) -> tuple[int, int]:
    """(busy GIs kept, GIs kept) of the best keep-set, by brute force over all subsets."""
    wanted = Counter(desired.instances)
    all_ids = [s.profile_id for s in desired.instances]
    best = (0, 0)
    for size in range(len(gpu_state.instances) + 1):
        for subset in itertools.combinations(gpu_state.instances, size):
            kept = Counter(gi_spec(gi) for gi in subset)
            if kept - wanted:
                continue
            rest = [s.profile_id for s in (wanted - kept).elements()]
            if rules_ok(gpu_state, all_ids) and placeable(
                gpu_state, rest, [gi.placement for gi in subset]
            ):
                best = max(best, (sum(gi.busy for gi in subset), size))
    return best


# ---------------------------------------------------------------------------
# Applying a plan, step by step, with every rule checked at every step
# ---------------------------------------------------------------------------


def partition_id(slot_count: int, placement: Placement) -> int:
    """GI id = hardware partition index: whole 0, halves 1-2, quarters 3-6, eighths 7+k."""
    if placement.size == slot_count:
        return 0
    if placement.size * 2 == slot_count:
        return 1 + placement.start // placement.size
    if placement.size * 4 == slot_count:
        return 3 + placement.start // placement.size
    return 7 + placement.start


def apply_plan(gpu_state: GpuState, plan: GpuPlan, *, force: bool = False) -> GpuState:
    """Execute ``plan`` on the value types the way a GPU would, checking every step."""
    assert not plan.blockers, plan.blockers
    instances = {gi.id: gi for gi in gpu_state.instances}
    for gi_id in plan.keep:
        assert gi_id in instances
    for gi_id in plan.destroy_gis:
        gone = instances.pop(gi_id)
        assert force or not gone.busy, f"destroyed busy GI {gone}"
        assert gi_id not in plan.keep
        # Its compute instances go first, and only those.
        assert [c for g, c in plan.destroy_cis if g == gi_id] == [
            c.id for c in gone.compute_instances
        ]
    assert {g for g, _ in plan.destroy_cis} <= set(plan.destroy_gis)
    pending = gpu_state.mig_pending if plan.set_mode is None else plan.set_mode
    if plan.set_mode is False:
        assert not instances, "MIG disabled with instances left"
    enabled = pending if plan.activate_mode else gpu_state.mig_enabled
    assert enabled == plan.target.mig_enabled
    assert pending == plan.target.mig_enabled
    for create in plan.create_gis:
        assert enabled
        profile = gpu_state.profile_by_id(create.profile_id)
        assert profile is not None
        assert create.placement in profile.placements
        for other in instances.values():
            assert not _span(other.placement) & _span(create.placement), (other, create)
        ids = [gi.profile_id for gi in instances.values()] + [create.profile_id]
        assert rules_ok(gpu_state, ids), ids
        gi_id = partition_id(gpu_state.slot_count, create.placement)
        assert gi_id not in instances
        cis: list[ComputeInstance] = []
        for ci_create in create.cis:
            ci = next(c for c in profile.ci_profiles if c.id == ci_create.profile_id)
            assert ci_create.placement in ci.placements
            for other_ci in cis:
                assert not _span(other_ci.placement) & _span(ci_create.placement)
            same = sum(c.profile_id == ci.id for c in cis) + 1
            assert same <= ci.instance_count
            used = sum(
                next(c for c in profile.ci_profiles if c.id == o.profile_id).slice_count
                for o in cis
            )
            assert used + ci.slice_count <= profile.slice_count
            cis.append(ComputeInstance(len(cis), ci.id, ci_create.placement))
        instances[gi_id] = GpuInstance(gi_id, create.profile_id, create.placement, tuple(cis))
    final = replace(
        gpu_state,
        mig_enabled=enabled,
        mig_pending=pending,
        instances=tuple(sorted(instances.values(), key=lambda g: g.id)),
    )
    assert sorted(gi_spec(gi) for gi in final.instances) == sorted(plan.target.instances)
    for gi_id in plan.keep:  # kept GIs are untouched, processes and all
        assert next(g for g in final.instances if g.id == gi_id) == next(
            g for g in gpu_state.instances if g.id == gi_id
        )
    return final


def random_state(
    gpu_state: GpuState, rng: random.Random, feasible: Sequence[tuple[int, ...]], busy: float = 0.0
) -> GpuState:
    """A random layout at random placements, with some GIs running processes."""
    options = spec_options(gpu_state)
    while True:
        ids = list(rng.choice(feasible))
        rng.shuffle(ids)
        used: set[int] = set()
        placed: list[tuple[int, Placement]] = []
        for pid in ids:
            free = [
                p
                for p in gpu_state.profile_by_id(pid).placements  # type: ignore[union-attr]
                if not _span(p) & used
            ]
            if not free:
                break
            p = rng.choice(free)
            used |= _span(p)
            placed.append((pid, p))
        else:
            break  # every GI found a spot; otherwise draw again
    instances = []
    for pid, p in placed:
        spec = rng.choice(options[pid])
        profile = gpu_state.profile_by_id(pid)
        cis = place_cis(profile, spec.ci_profile_ids)  # type: ignore[arg-type]
        assert cis is not None
        gi_id = partition_id(gpu_state.slot_count, p)
        pids = (1000 + gi_id,) if rng.random() < busy else ()
        instances.append(
            GpuInstance(
                gi_id,
                pid,
                p,
                tuple(
                    ComputeInstance(i, c.profile_id, c.placement, pids if i == 0 else ())
                    for i, c in enumerate(cis)
                ),
            )
        )
    return replace(gpu_state, instances=tuple(sorted(instances, key=lambda g: g.id)))


def random_desired(
    gpu_state: GpuState, rng: random.Random, feasible: Sequence[tuple[int, ...]]
) -> DesiredGpu:
    options = spec_options(gpu_state)
    ids = rng.choice(feasible)
    return desired_of(gpu_state, [rng.choice(options[pid]) for pid in ids])


def neighbour_desired(
    state: GpuState, rng: random.Random, feasible: Sequence[tuple[int, ...]]
) -> DesiredGpu:
    """What ``state`` holds with one GI dropped and, where one fits, another one added."""
    specs = [gi_spec(gi) for gi in state.instances]
    if specs:
        specs.pop(rng.randrange(len(specs)))
    options = spec_options(state)
    fits = set(feasible)
    extra = [pid for pid in options if tuple(sorted([*(s.profile_id for s in specs), pid])) in fits]
    if extra:
        specs.append(rng.choice(options[rng.choice(sorted(extra))]))
    return desired_of(state, specs)
