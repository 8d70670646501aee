"""The layouts and transitions the benchmarks walk, and what a transition could keep.

Layouts are the 127 non-empty GI-profile multisets an 8-slot H200 can hold, from
the plain enumeration in ``tests/feasible.py`` (the oracle the planner's tests check
against), each spelled as the profile names a config would use. Transitions are
seeded random pairs of them plus a few named, realistic changes.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from feasible import feasible_multisets, placeable

from bench.simnode import H200
from migd.core.gpu_models import blank_gpu
from migd.core.layout import DesiredGpu, GiSpec, GpuState, Placement
from migd.core.names import name_order
from migd.formats.gpu_models import load_model

Layout = tuple[str, ...]  # profile names, one per GPU instance, smallest first


@functools.cache
def blank(model: str = H200) -> GpuState:
    """One GPU of ``model`` with MIG on and nothing on it, as the planner sees it."""
    return blank_gpu(load_model(model), index=0, mig_enabled=True)


def layout_of(gpu: GpuState, profile_ids: Iterable[int]) -> Layout:
    names = [gpu.profile_by_id(pid).name for pid in profile_ids]  # type: ignore[union-attr]
    return tuple(sorted(names, key=name_order))


def ids_of(gpu: GpuState, layout: Layout) -> tuple[int, ...]:
    by_name = {p.name: p.id for p in gpu.profiles}
    return tuple(sorted(by_name[n] for n in layout))


def counts(layout: Layout) -> dict[str, int]:
    """The ``mig-devices`` map of a layout."""
    return dict(Counter(layout))


def text(layout: Layout) -> str:
    """``1g.18gb×2+2g.35gb+3g.71gb``."""
    if not layout:
        return "empty"
    c = Counter(layout)
    return "+".join(n if c[n] == 1 else f"{n}×{c[n]}" for n in sorted(c, key=name_order))


def feasible_layouts(model: str = H200) -> list[Layout]:
    """Every non-empty layout the GPU can hold, in a fixed order (127 on an H200)."""
    gpu = blank(model)
    found = {layout_of(gpu, ids) for ids in feasible_multisets(gpu) if ids}
    return sorted(found, key=lambda lay: (len(lay), [name_order(n) for n in lay]))


def desired(gpu: GpuState, layout: Layout, index: int = 0) -> DesiredGpu:
    """The resolved layout the planner takes: each GI with its full CI."""
    specs = []
    for name in layout:
        profile = next(p for p in gpu.profiles if p.name == name)
        full = profile.full_ci()
        assert full is not None
        specs.append(GiSpec(profile.id, (full.id,)))
    return DesiredGpu(index, True, tuple(sorted(specs)))


@dataclass(frozen=True)
class Transition:
    name: str  # "" for a random pair
    before: Layout
    after: Layout


BALANCED: Layout = ("1g.18gb", "1g.18gb", "2g.35gb", "3g.71gb")
ALL_1G: Layout = ("1g.18gb",) * 7

# Changes operators make, each from a layout a node commonly holds.
NAMED: tuple[Transition, ...] = (
    Transition("balanced -> all 1g", BALANCED, ALL_1G),
    Transition("all 1g -> balanced", ALL_1G, BALANCED),
    Transition("whole GPU -> two halves", ("7g.141gb",), ("3g.71gb", "4g.71gb")),
    Transition(
        "split the 4g half",
        ("3g.71gb", "4g.71gb"),
        ("1g.18gb", "1g.18gb", "2g.35gb", "3g.71gb"),
    ),
    Transition(
        "add a media engine",
        BALANCED,
        ("1g.18gb", "1g.18gb+me", "2g.35gb", "3g.71gb"),
    ),
    Transition("two 1g -> one 2g", ALL_1G, ("1g.18gb",) * 5 + ("2g.35gb",)),
    Transition("all 1g -> double-memory 1g", ALL_1G, ("1g.35gb",) * 4),
    Transition("training -> inference", ("7g.141gb",), ALL_1G),
)


def transitions(count: int, seed: int = 20261128, model: str = H200) -> list[Transition]:
    """The named transitions, then ``count`` seeded random pairs of distinct layouts."""
    layouts = feasible_layouts(model)
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < count:
        a, b = rng.choice(layouts), rng.choice(layouts)
        if a != b:
            pairs.append(Transition("", a, b))
    return [*NAMED, *pairs]


def keepable(gpu: GpuState, held: Sequence[tuple[int, Placement]], target: Sequence[int]) -> int:
    """How many of the GIs ``held`` (profile id, placement) a complete arrangement of
    ``target`` (profile ids) can keep where they are: the most any tool could keep.

    Brute force over subsets, largest first, with the plain placement search of
    ``tests/feasible.py`` (no planner code), so it can judge the planner.
    """
    want = Counter(target)
    for size in range(len(held), -1, -1):
        for subset in itertools.combinations(held, size):
            kept = Counter(pid for pid, _ in subset)
            if kept - want:
                continue
            rest = list((want - kept).elements())
            if placeable(gpu, rest, [p for _, p in subset]):
                return size
    return 0
