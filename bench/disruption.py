"""Disruption and NVML calls per change: migd against the mig-parted model.

Two walks over a one-GPU simulated H200, each scenario on a fresh node with a fresh
call log (so ``migd sim stats`` counts exactly its calls):

- every one of the 127 feasible layouts, applied to an empty GPU;
- transitions: the node first holds layout A as the same tool placed it, then the
  tool applies layout B. Counted: mutating calls, failed calls, GPU instances
  destroyed, and how many of the instances present before the change B could have
  kept where they were (brute force, :func:`bench.layouts.keepable`) but the tool
  destroyed anyway.

mig-parted is run once per order its random map iteration can give tied profiles
(1g.18gb and 1g.35gb), since that order changes what it does.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pynvml

from bench.layouts import (
    Layout,
    Transition,
    blank,
    feasible_layouts,
    ids_of,
    keepable,
    text,
    transitions,
)
from bench.migparted_model import TieOrder, gi_profile_table, tie_orders
from bench.simnode import (
    CallCounts,
    counts_between,
    gi_serials,
    init_node,
    read_node,
    stats,
)
from bench.tools import migd_apply, migparted_apply
from migd import sim
from migd.core.layout import Placement

MIGD = "migd"


@dataclass(frozen=True)
class Tool:
    """A named way of applying one GPU's layout to the node in STATE."""

    name: str
    apply: Callable[[str, Layout], bool]  # True when the GPU ended holding the layout
    orderings: Callable[[], int]  # orderings the last apply tried (mig-parted), else 0


def _holds(state: str, layout: Layout) -> bool:
    """Whether the node's GPU 0 holds exactly the GPU instances ``layout`` names."""
    names = {p.id: p.name for p in blank().profiles}
    held = Counter(names[gi.profile_id] for gi in read_node(state).gpus[0].gpu_instances)
    return held == Counter(layout)


def _migd_tool() -> Tool:
    def apply(state: str, layout: Layout) -> bool:
        result = migd_apply(state, {0: layout})
        return result.exit_code == 0 and _holds(state, layout)

    return Tool(MIGD, apply, lambda: 0)


def _migparted_tool(tie: TieOrder) -> Tool:
    last = [0]

    def apply(state: str, layout: Layout) -> bool:
        (result,) = migparted_apply(state, {0: layout}, tie.order)
        last[0] = result.orderings
        return result.succeeded and _holds(state, layout)

    label = f"mig-parted ({tie.label})" if tie.label else "mig-parted"
    return Tool(label, apply, lambda: last[0])


def tools(workdir: str) -> list[Tool]:
    """migd, then the mig-parted model once per tie order of the H200's table."""
    state = f"{workdir}/probe.json"
    init_node(state, 1)
    sim.activate(state)
    pynvml.nvmlInit()
    try:
        rows = gi_profile_table(pynvml.nvmlDeviceGetHandleByIndex(0))
    finally:
        pynvml.nvmlShutdown()
    return [_migd_tool(), *(_migparted_tool(t) for t in tie_orders(rows))]


@dataclass(frozen=True)
class Run:
    """One tool, one scenario."""

    tool: str
    before: Layout
    after: Layout
    name: str
    ok: bool
    orderings: int
    calls: CallCounts
    held_before: int = 0  # GIs present before the change
    kept: int = 0  # of those, still there afterwards (same serial: never recreated)
    keepable: int = 0  # of those, the most a complete arrangement of `after` can keep

    @property
    def destroyed_keepable(self) -> int:
        return max(0, self.keepable - self.kept)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "name": self.name,
            "before": text(self.before),
            "after": text(self.after),
            "instances": len(self.after),
            "ok": self.ok,
            "orderings": self.orderings,
            "calls": dataclasses.asdict(self.calls),
            "held_before": self.held_before,
            "kept": self.kept,
            "keepable": self.keepable,
            "destroyed_keepable": self.destroyed_keepable,
        }


def _run(tool: Tool, state: str, before: Layout, after: Layout, name: str = "") -> Run:
    init_node(state, 1)
    held: list[tuple[int, Placement]] = []
    serials: frozenset[int] = frozenset()
    if before:
        if not tool.apply(state, before):
            raise RuntimeError(f"{tool.name} could not set up {text(before)}")
        node = read_node(state)
        held = [(gi.profile_id, Placement(gi.start, gi.size)) for gi in node.gpus[0].gpu_instances]
        serials = gi_serials(node, 0)
    first = stats(state)
    ok = tool.apply(state, after)
    calls = counts_between(first, stats(state))
    kept = len(serials & gi_serials(read_node(state), 0))
    gpu = blank()
    return Run(
        tool=tool.name,
        before=before,
        after=after,
        name=name,
        ok=ok,
        orderings=tool.orderings(),
        calls=calls,
        held_before=len(held),
        kept=kept,
        keepable=keepable(gpu, held, ids_of(gpu, after)) if held else 0,
    )


def _totals(runs: Sequence[Run]) -> dict[str, Any]:
    calls = CallCounts()
    for r in runs:
        calls = calls + r.calls
    return {
        "scenarios": len(runs),
        "failed_scenarios": sum(not r.ok for r in runs),
        "orderings": sum(r.orderings for r in runs),
        "calls": dataclasses.asdict(calls),
        "gi_created": calls.gi_creates - calls.gi_creates_failed,
        "held_before": sum(r.held_before for r in runs),
        "kept": sum(r.kept for r in runs),
        "keepable": sum(r.keepable for r in runs),
        "destroyed_keepable": sum(r.destroyed_keepable for r in runs),
        "scenarios_destroying_keepable": sum(r.destroyed_keepable > 0 for r in runs),
    }


def _worst(runs: Sequence[Run], *, by_orderings: bool = False) -> dict[str, Any]:
    """The scenario with the most mutating calls (or the most orderings, then calls)."""

    def key(r: Run) -> tuple[int, int]:
        calls = r.calls.mutating
        return (r.orderings, calls) if by_orderings else (calls, r.orderings)

    worst = max(runs, key=key)
    return {
        **worst.as_dict(),
        "gi_created": worst.calls.gi_creates - worst.calls.gi_creates_failed,
    }


def run_walks(
    tool: Tool, state: str, layouts: Sequence[Layout], moves: Sequence[Transition]
) -> dict[str, Any]:
    """Both walks for one tool (what the slot-order comparison needs): totals, the
    mutating calls of each scenario (None for a change whose starting layout the tool
    could not make: under some slot orders mig-parted cannot make every layout), and
    how many layouts it did not reach."""
    empty = [_run(tool, state, (), lay) for lay in layouts]
    changes: list[Run | None] = []
    for m in moves:
        try:
            changes.append(_run(tool, state, m.before, m.after, m.name))
        except RuntimeError:
            changes.append(None)
    return {
        "from_empty": _totals(empty),
        "transitions": _totals([r for r in changes if r is not None]),
        # A scenario the tool failed still made its calls: they count.
        "from_empty_calls": [r.calls.mutating for r in empty],
        "transition_calls": [r.calls.mutating if r else None for r in changes],
        "from_empty_not_reached": sum(not r.ok for r in empty),
        "transition_not_reached": sum(r is None or not r.ok for r in changes),
    }


def measure(workdir: str, *, random_transitions: int) -> dict[str, Any]:
    """Both walks for every tool; plain data for the report and the smoke test."""
    state = f"{workdir}/disruption.json"
    layouts = feasible_layouts()
    moves: list[Transition] = transitions(random_transitions)
    result: dict[str, Any] = {
        "gpu": "H200 (8 memory slices, 7 compute slices)",
        "layouts": len(layouts),
        "transitions": len(moves),
        "named_transitions": sum(1 for m in moves if m.name),
        "tools": {},
    }
    for tool in tools(workdir):
        from_empty = [_run(tool, state, (), lay) for lay in layouts]
        changes = [_run(tool, state, m.before, m.after, m.name) for m in moves]
        result["tools"][tool.name] = {
            "from_empty": {
                "totals": _totals(from_empty),
                "worst": _worst(from_empty),
                "worst_orderings": _worst(from_empty, by_orderings=True),
            },
            "transitions": {
                "totals": _totals(changes),
                "worst": _worst(changes),
                "named": [r.as_dict() for r in changes if r.name],
            },
            "per_layout": [
                {
                    "layout": text(r.after),
                    "instances": len(r.after),
                    "orderings": r.orderings,
                    "mutating": r.calls.mutating,
                    "failed": r.calls.failed,
                    "gi_create_calls": r.calls.gi_creates,
                    "ci_create_calls": r.calls.ci_creates,
                    "gi_destroys": r.calls.gi_destroys,
                }
                for r in from_empty
            ],
        }
    return result
