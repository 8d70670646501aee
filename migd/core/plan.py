"""The Plan: what migd will do to the node, decided before anything is touched.

One immutable :class:`NodePlan` per decision, made by ``migd.core.planner.plan_node``
from a snapshot and a goal (the layouts the selected config wants, or a checkpoint).
It has one :class:`GpuPlan` per GPU of the node: the GPU as read, the layout it
should hold, the steps between in execution order (destroys, the MIG mode, creates,
each at an explicit placement), and what the plan decided for it (:class:`Action`):
change it, nothing to do, blocked by a running process, left alone, or unreadable.

``migd plan`` prints it (:func:`format_plan`, :func:`plan_to_dict`); ``migd apply``,
``migd restore`` and the daemon hand it to the executor (``migd.gpu.executor``); the
change orchestrator (``migd.node.change``) reads it to know which hooks to run and
which units to stop. Pure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migd.core.checkpoint import GpuRecord
from migd.core.layout import DesiredGpu, GpuState, NodeSnapshot, Placement, gi_spec
from migd.core.names import (
    ci_name,
    describe,
    describe_current,
    format_counts,
    layout_counts,
    observed_layout,
    profile_label,
)

# ---------------------------------------------------------------------------
# Values
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
class Blocker:
    """A busy GI the plan would have to destroy; ``reason`` is one sentence for an operator."""

    gi_id: int
    profile: str
    pids: tuple[int, ...]
    reason: str


class Action(enum.Enum):
    """What the plan does on one GPU."""

    CHANGE = "change"  # carry out the steps
    NOOP = "noop"  # it already holds its layout
    BLOCKED = "blocked"  # the steps would destroy an instance that runs a process
    SKIPPED = "skipped"  # the goal does not cover it, or it has no MIG: left alone
    UNREADABLE = "unreadable"  # it could not be read: nothing can be planned on it


@dataclass(frozen=True)
class GpuPlan:
    """What to do on one GPU, and why.

    The steps run in this order: destroy the CIs, then the GIs; set the MIG mode (and
    activate it); create CIs in GIs that stay, then new GIs, each with its CIs. When
    ``action`` is BLOCKED the steps show what ``force`` would do, so an operator sees
    the cost; ``reason`` says why the GPU is blocked, skipped or unreadable.

    ``exact`` is set when the goal is a recorded geometry (a checkpoint): its ids and
    placements are created as recorded and the GPU must end exactly so. Otherwise the
    CI profile ids of the creates come from the table read before acting, and the
    executor maps them onto the table a new GI really offers.
    """

    gpu: GpuState  # the GPU as read when the plan was made
    action: Action
    target: DesiredGpu | None = None  # None: not covered by the goal, or unreadable
    reason: str = ""
    keep: tuple[int, ...] = ()  # GI ids kept untouched
    destroy_cis: tuple[tuple[int, int], ...] = ()  # (GI id, CI id), before any GI
    destroy_gis: tuple[int, ...] = ()
    set_mode: bool | None = None  # MIG mode to request; None: the pending mode is right
    activate_mode: bool = False  # the current mode differs from the target (a reset may follow)
    create_cis: tuple[tuple[int, CiCreate], ...] = ()  # (kept GI id, CI to create in it)
    create_gis: tuple[GiCreate, ...] = ()
    blockers: tuple[Blocker, ...] = ()
    exact: GpuRecord | None = None
    mode_only: bool = False  # only the MIG mode is to change (apply -m)

    @property
    def index(self) -> int:
        return self.gpu.index

    @property
    def has_steps(self) -> bool:
        return bool(
            self.destroy_cis
            or self.destroy_gis
            or self.set_mode is not None
            or self.activate_mode
            or self.create_cis
            or self.create_gis
        )

    @property
    def noop(self) -> bool:
        """Nothing to do and nothing in the way."""
        return not (self.has_steps or self.blockers)

    @property
    def mode_request(self) -> bool | None:
        """The MIG mode to ask NVML for, or None.

        The planned ``set_mode``; or, when only the activation of a change already
        pending remains, the target mode once more: asking again costs nothing and
        returns the activation status, so a GPU that only a reboot can switch
        (passthrough) is recognised without trying a reset that cannot work.
        """
        if self.set_mode is not None:
            return self.set_mode
        if self.activate_mode and self.target is not None:
            return self.target.mig_enabled
        return None


@dataclass(frozen=True)
class NodePlan:
    """One plan for the node: a :class:`GpuPlan` for every GPU of ``snapshot``.

    ``gpus`` lists the GPUs the goal covers in the goal's order (the checkpoint's, or
    by index), then the others by index: the order the executor acts in.
    """

    snapshot: NodeSnapshot
    gpus: tuple[GpuPlan, ...]
    force: bool = False  # busy instances may be destroyed

    def gpu(self, index: int) -> GpuPlan:
        for plan in self.gpus:
            if plan.index == index:
                return plan
        raise KeyError(index)

    @property
    def desired(self) -> tuple[DesiredGpu, ...]:
        """The layout of every GPU the goal covers (and that could be read)."""
        return tuple(p.target for p in self.gpus if p.target is not None)

    @property
    def changes(self) -> tuple[GpuPlan, ...]:
        """The GPUs the plan changes."""
        return tuple(p for p in self.gpus if p.action is Action.CHANGE)


# ---------------------------------------------------------------------------
# Showing a plan (``migd plan``)
# ---------------------------------------------------------------------------


def _placement_dict(placement: Placement) -> dict[str, int]:
    return {"start": placement.start, "size": placement.size}


def plan_to_dict(plan: GpuPlan) -> dict[str, Any]:
    """A JSON-ready description of one GPU's plan (``migd plan --json``)."""
    gpu = plan.gpu
    assert plan.target is not None, "only GPUs the goal covers are shown"
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
                    "profile": ci_name(profile, ci.profile_id) if profile else str(ci.profile_id),
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
            "mig_enabled": plan.target.mig_enabled,
            "layout": [list(pair) for pair in layout_counts(gpu, plan.target.instances)]
            if plan.target.mig_enabled
            else [],
        },
        "noop": plan.noop,
        "set_mode": plan.set_mode,
        "activate_mode": plan.activate_mode,
        "keep": [gi_dict(i) for i in plan.keep],
        "destroy": [gi_dict(gi_id) for gi_id in plan.destroy_gis],
        "create": [create_dict(c) for c in plan.create_gis],
        "blocked": [
            {"gi_id": b.gi_id, "profile": b.profile, "pids": list(b.pids), "reason": b.reason}
            for b in plan.blockers
        ],
    }


def format_plan(plan: NodePlan) -> str:
    """Readable text for ``migd plan``: one block per GPU of the node, by index."""
    lines: list[str] = []
    for gpu in sorted(plan.snapshot.gpus, key=lambda g: g.index):
        head = f"GPU {gpu.index} {gpu.name} ({gpu.bus_id})"
        this = plan.gpu(gpu.index)
        if this.action is Action.UNREADABLE:
            lines.append(f"GPU {gpu.index}: {gpu.unreadable_reason}; nothing can be planned on it")
            continue
        if this.target is None:
            lines.append(f"{head}: {describe_current(gpu)}; not covered by the config, left alone")
            continue
        want = describe(gpu, this.target)
        if this.noop:
            lines.append(f"{head}: {want}; nothing to do")
            continue
        lines.append(f"{head}: {describe_current(gpu)} -> {want}")
        instances = {gi.id: gi for gi in gpu.instances}
        for blocker in this.blockers:
            lines.append(f"  BLOCKED  {blocker.reason}")
        if this.set_mode is not None:
            lines.append(f"  set MIG mode {'on' if this.set_mode else 'off'}")
        if this.activate_mode:
            lines.append("  activate the mode change (a GPU reset may be needed)")
        for gi_id in this.keep:
            gi = instances[gi_id]
            held = format_counts(layout_counts(gpu, [gi_spec(gi)]))
            lines.append(f"  keep     GI {gi_id} {held} at {gi.placement}")
        for gi_id in this.destroy_gis:
            gi = instances[gi_id]
            held = format_counts(layout_counts(gpu, [gi_spec(gi)]))
            busy = " (busy)" if gi.busy else ""
            lines.append(f"  destroy  GI {gi_id} {held} at {gi.placement}{busy}")
        for c in this.create_gis:
            profile = gpu.profile_by_id(c.profile_id)
            cis = ", ".join(
                f"{ci_name(profile, ci.profile_id) if profile else ci.profile_id} at {ci.placement}"
                for ci in c.cis
            )
            lines.append(
                f"  create   {profile_label(gpu, c.profile_id)} at {c.placement} with CI {cis}"
            )
    return "\n".join(lines)
