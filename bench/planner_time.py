"""Planner: time to plan each of the 127 layouts from empty and each transition.

The planner is a pure function (:func:`migd.core.planner.plan_gpu`): current GPU state and
desired layout in, plan out. Each figure is the fastest of ``repeats`` calls on the
same input (pure CPU work: the minimum filters out the noise of a shared machine);
p50 and p99 are taken over the inputs.

Baselines, timed the same way on the same inputs:

- trivial: a pure function that only reads its input (counts the wanted
  instances) — the floor of any function called per layout;
- brute-force oracle: the plain search of ``tests/feasible.py`` deciding only
  whether the layout fits (from empty), or the brute-force count of how many
  present instances could be kept (:func:`bench.layouts.keepable`, transitions) —
  the same questions the planner answers, asked the simplest way. The planner also
  chooses placements and the order of operations.

Transition states are what migd's own plan from empty would place for the first
layout (its creates, at their placements), so no simulator is involved.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from feasible import placeable, rules_ok

from bench.layouts import (
    Transition,
    blank,
    desired,
    feasible_layouts,
    ids_of,
    keepable,
    transitions,
)
from bench.stats import ratio, summary
from migd.core.layout import ComputeInstance, DesiredGpu, GpuInstance, GpuState
from migd.core.planner import plan_gpu


def _fastest(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - started) / 1e9)
    return best


def _trivial(want: DesiredGpu) -> object:
    return sorted(Counter(s.profile_id for s in want.instances).items())


def placed(gpu: GpuState, want: DesiredGpu) -> GpuState:
    """``gpu`` holding what migd's plan from empty creates for ``want``, where it puts it."""
    plan = plan_gpu(gpu, want)
    instances = tuple(
        GpuInstance(
            id=i,
            profile_id=c.profile_id,
            placement=c.placement,
            compute_instances=tuple(
                ComputeInstance(j, ci.profile_id, ci.placement) for j, ci in enumerate(c.cis)
            ),
        )
        for i, c in enumerate(plan.create_gis)
    )
    return dataclasses.replace(gpu, instances=instances)


def _series(
    samples: Sequence[float], base: Sequence[float], oracle: Sequence[float]
) -> dict[str, Any]:
    s, b, o = summary(samples), summary(base), summary(oracle)
    return {
        "planner": s,
        "trivial": b,
        "oracle": o,
        "vs_trivial_p50": ratio(s["p50"], b["p50"]),
        "vs_oracle_p50": ratio(s["p50"], o["p50"]),
        "vs_oracle_p99": ratio(s["p99"], o["p99"]),
    }


def measure(*, random_transitions: int, repeats: int) -> dict[str, Any]:
    gpu = blank()
    layouts = feasible_layouts()
    plans, trivial, oracle = [], [], []
    for layout in layouts:
        want = desired(gpu, layout)
        ids = ids_of(gpu, layout)
        plans.append(_fastest(lambda w=want: plan_gpu(gpu, w), repeats))
        trivial.append(_fastest(lambda w=want: _trivial(w), repeats))
        oracle.append(_fastest(lambda i=ids: rules_ok(gpu, i) and placeable(gpu, i), repeats))
    moves: list[Transition] = transitions(random_transitions)
    t_plans, t_trivial, t_oracle = [], [], []
    for move in moves:
        state = placed(gpu, desired(gpu, move.before))
        want = desired(gpu, move.after)
        held = [(gi.profile_id, gi.placement) for gi in state.instances]
        target = ids_of(gpu, move.after)
        t_plans.append(_fastest(lambda s=state, w=want: plan_gpu(s, w), repeats))
        t_trivial.append(_fastest(lambda w=want: _trivial(w), repeats))
        t_oracle.append(_fastest(lambda h=held, t=target: keepable(gpu, h, t), repeats))
    return {
        "repeats": repeats,
        "layouts": len(layouts),
        "transitions": len(moves),
        "from_empty": _series(plans, trivial, oracle),
        "transition": _series(t_plans, t_trivial, t_oracle),
    }
