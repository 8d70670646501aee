"""Which layout each GPU gets from the selected config, resolved against that GPU's own table.

Pure: works on a :class:`NodeSnapshot` and the selected config's entries.

Selection follows mig-parted: every entry that matches a GPU (``devices`` and
``device-filter``) applies to it and later entries win; a GPU without MIG is skipped
for ``devices: all`` or ``mig-enabled: false`` and is an error for an enabled entry
that lists it by index; a GPU no entry covers gets no layout and is left alone.

Resolution is against the profile table the GPU itself reports, so one config works
across SKUs and driver versions (mig-parted issues #31, #157, #227):

- exact names as the GPU reports them, compared canonically (``1c.1g.18gb`` is
  ``1g.18gb``); zero counts are ignored;
- memory-agnostic names (``3g``, ``1g+me``, ``1c.3g``) mean this GPU's standard
  profile of that size: the one at the base NVML_GPU_INSTANCE_PROFILE_* index for the
  slice count and attributes (``1g`` is 1_SLICE, never the double-memory 1_SLICE_REV2);
- ``<c>c.<g>g.<GB>gb`` names ask for compute instances inside GIs of that profile:
  per GI profile they are packed into as few GIs as the CI placements allow; a whole-GI
  name gets one GI holding its full CI.

Every problem of every GPU is collected and raised together as one
:class:`SelectionError` (an :class:`InvalidRequest`) before anything is touched.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from migd.core.layout import CiProfile, DesiredGpu, GiProfile, GiSpec, GpuState, NodeSnapshot
from migd.core.names import format_counts, layout_counts, name_order
from migd.core.placement import layout_problem, parsed_name, place_cis
from migd.core.profiles import ProfileName, ProfileNameError, standard_ci_index, standard_gi_index
from migd.errors import InvalidRequest


class ConfigEntryLike(Protocol):
    """What selection needs of one entry of the selected config (a ``ConfigEntry``)."""

    @property
    def devices(self) -> str | tuple[int, ...]: ...  # "all" or NVML indices

    @property
    def mig_enabled(self) -> bool: ...

    @property
    def mig_devices(self) -> tuple[tuple[str, int], ...]: ...  # profile as written -> count

    @property
    def path(self) -> str: ...  # key path for messages: mig-configs.all-balanced[1]

    @property
    def line(self) -> int: ...

    @property
    def column(self) -> int: ...

    @property
    def source(self) -> str: ...  # the file it was read from; empty when unknown

    def matches(self, index: int, pci_device_id: int, pci_subsystem_id: int) -> bool: ...


class SelectionError(InvalidRequest):
    """The selected config cannot be applied to this node; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class ResolvedProfile:
    """A profile name resolved on one GPU: the GI it asks for and the CI inside it.

    ``whole_gi`` is True for a GI name (one GI holding ``ci``, its full CI) and False
    for a ``1c.2g.35gb`` name (one CI ``ci`` inside a GI of profile ``gi``).
    """

    name: str
    gi: GiProfile
    ci: CiProfile
    whole_gi: bool


def gpu_label(gpu: GpuState) -> str:
    """How messages name a GPU: ``GPU 0 (NVIDIA H200)``."""
    return f"GPU {gpu.index} ({gpu.name})"


def valid_profiles(gpu: GpuState) -> tuple[str, ...]:
    """Every profile name ``gpu`` accepts: its GI names, then the CI forms its GIs offer."""
    gis = {p.name for p in gpu.profiles}
    cis = {ci.name for p in gpu.profiles for ci in p.ci_profiles if ci.slice_count < p.slice_count}
    return (*sorted(gis, key=name_order), *sorted(cis, key=name_order))


class ProfileNotOffered(InvalidRequest):
    """A profile name one GPU cannot honour. ``detail`` says why without naming the GPU,
    so problems of several GPUs alike can be reported once, naming them all."""

    def __init__(self, gpu: GpuState, detail: str) -> None:
        self.detail = detail
        super().__init__(f"{gpu_label(gpu)}: {detail}")


def _unknown(gpu: GpuState, why: str) -> ProfileNotOffered:
    """A name this GPU cannot honour: says why and lists what it does offer."""
    choices = ", ".join(valid_profiles(gpu)) or "none (the GPU reports no MIG profiles)"
    return ProfileNotOffered(gpu, f"{why}; valid here: {choices}")


def _resolve_gi(gpu: GpuState, wanted: ProfileName, name: str) -> GiProfile:
    """The GI profile ``wanted`` (a GI name, possibly memory-agnostic) stands for on ``gpu``."""
    if not wanted.memory_agnostic:
        for profile in gpu.profiles:
            if parsed_name(profile) == wanted:
                return profile
        raise _unknown(gpu, f"unknown profile {name!r}")
    same_size = [
        p
        for p in gpu.profiles
        if (parsed := parsed_name(p)) is not None
        and (parsed.gi_slices, parsed.attributes, parsed.negated)
        == (wanted.gi_slices, wanted.attributes, wanted.negated)
    ]
    base = standard_gi_index(wanted.gi_slices, wanted.attributes, wanted.negated)
    for profile in same_size:
        if profile.index == base:
            return profile
    if same_size:
        names = ", ".join(sorted(p.name for p in same_size))
        raise ProfileNotOffered(
            gpu,
            f"{name!r} cannot be resolved unambiguously: the GPU has no "
            f"standard {wanted.gi_name} profile, only {names}; name one of them",
        )
    raise _unknown(gpu, f"unknown profile {name!r}")


def resolve_profile(gpu: GpuState, name: str) -> ResolvedProfile:
    """Resolve one profile name of a config against ``gpu``'s own table.

    Raises ProfileNotOffered (an InvalidRequest) naming the GPU, the profile and the
    valid choices.
    """
    try:
        parsed = ProfileName.parse(name)
    except ProfileNameError as exc:
        raise _unknown(gpu, str(exc)) from None
    gi = _resolve_gi(gpu, parsed.gi_name, name)
    if parsed.ci_slices is None:
        full = gi.full_ci()
        if full is None:
            raise ProfileNotOffered(
                gpu, f"{gi.name} reports no compute-instance profile spanning it"
            )
        return ResolvedProfile(name, gi, full, whole_gi=True)
    sized = [ci for ci in gi.ci_profiles if ci.slice_count == parsed.ci_slices]
    standard = [ci for ci in sized if ci.index == standard_ci_index(parsed.ci_slices)]
    chosen = standard or sized
    if len(chosen) == 1:
        return ResolvedProfile(name, gi, chosen[0], whole_gi=False)
    if not chosen:
        raise _unknown(
            gpu, f"{gi.name} offers no {parsed.ci_slices}-slice compute instance ({name!r})"
        )
    raise ProfileNotOffered(
        gpu,
        f"{name!r} cannot be resolved unambiguously: {gi.name} offers "
        f"{len(chosen)} {parsed.ci_slices}-slice compute-instance profiles "
        f"(ids {', '.join(str(ci.id) for ci in chosen)})",
    )


def _pack(gi: GiProfile, wanted: Counter[int]) -> list[tuple[int, ...]] | None:
    """Group the CIs ``wanted`` (CI profile id → count) into as few GIs of ``gi`` as fit.

    Exact: a GI's possible contents are the sub-multisets whose CIs can all be placed
    in one GI; a memoised search covers ``wanted`` with the fewest of them. Denser GIs
    are tried first, so equal answers always come out the same. None when some CI
    fits no GI at all.
    """
    offered = {ci.id: ci for ci in gi.ci_profiles}  # every wanted id was resolved from it
    kinds = sorted(wanted, key=lambda cid: (-offered[cid].slice_count, cid))
    caps = tuple(wanted[k] for k in kinds)
    slices = tuple(offered[k].slice_count for k in kinds)

    def ids(vec: Sequence[int]) -> list[int]:
        return [k for k, n in zip(kinds, vec, strict=True) for _ in range(n)]

    contents = [
        vec
        for vec in itertools.product(*(range(c + 1) for c in caps))
        if any(vec) and place_cis(gi, ids(vec)) is not None
    ]
    contents.sort(
        key=lambda v: (-sum(s * n for s, n in zip(slices, v, strict=True)), tuple(-n for n in v))
    )
    memo: dict[tuple[int, ...], tuple[tuple[int, ...], ...] | None] = {}

    def cover(rest: tuple[int, ...]) -> tuple[tuple[int, ...], ...] | None:
        if not any(rest):
            return ()
        if rest in memo:
            return memo[rest]
        # The first CI still to place goes into some GI: trying only the contents that
        # hold it removes the orderings of the same GIs from the search.
        first = next(i for i, n in enumerate(rest) if n)
        best: tuple[tuple[int, ...], ...] | None = None
        for vec in contents:
            if not vec[first] or any(v > r for v, r in zip(vec, rest, strict=True)):
                continue
            tail = cover(tuple(r - v for r, v in zip(rest, vec, strict=True)))
            if tail is not None and (best is None or len(tail) + 1 < len(best)):
                best = (vec, *tail)
        memo[rest] = best
        return best

    found = cover(caps)
    if found is None:
        return None
    return [tuple(sorted(ids(vec))) for vec in found]


def _layout(gpu: GpuState, entry: ConfigEntryLike) -> tuple[DesiredGpu | None, list[str]]:
    """The DesiredGpu ``entry`` asks of ``gpu``, or the problems that prevent it.

    Each problem says what is wrong without naming the entry or the GPU: the caller
    adds both, once for every GPU alike.
    """
    if not entry.mig_enabled:
        return DesiredGpu(gpu.index, False, (), tuple(entry.mig_devices)), []
    problems: list[str] = []
    whole: list[GiSpec] = []
    partial: dict[int, Counter[int]] = {}
    profiles: dict[int, GiProfile] = {}
    for name, count in entry.mig_devices:
        if count == 0:
            continue  # mig-parted recreates these on every apply; migd ignores them
        if count < 0:
            problems.append(f"{name}: count {count} is negative")
            continue
        try:
            resolved = resolve_profile(gpu, name)
        except ProfileNotOffered as exc:
            problems.append(exc.detail)
            continue
        gi = resolved.gi
        profiles[gi.id] = gi
        # Bound the counts before building lists from them: a GI profile holds at most
        # instance_count GIs and a GI at most one CI per compute slice.
        if resolved.whole_gi:
            if count > gi.instance_count:
                problems.append(
                    f"{name}: {count} wanted, at most {gi.instance_count} {gi.name} fit"
                )
                continue
            whole.extend([GiSpec(gi.id, (resolved.ci.id,))] * count)
        else:
            partial.setdefault(gi.id, Counter())[resolved.ci.id] += count
    for gi_id, cis in sorted(partial.items()):
        gi = profiles[gi_id]
        limit = gi.instance_count * gi.slice_count
        if sum(cis.values()) > limit:
            problems.append(
                f"{sum(cis.values())} compute instances in {gi.name} GIs wanted, "
                f"at most {limit} fit"
            )
            continue
        packed = _pack(gi, cis)
        if packed is None:
            problems.append(
                f"the compute instances asked in {gi.name} do not fit its compute-instance "
                "placements"
            )
            continue
        whole.extend(GiSpec(gi_id, ci_ids) for ci_ids in packed)
    if problems:
        return None, problems
    specs = tuple(sorted(whole))
    problem = layout_problem(gpu, specs)
    if problem is not None:
        text = format_counts(layout_counts(gpu, specs))
        return None, [f"{text} cannot be placed: {problem}"]
    return DesiredGpu(gpu.index, True, specs, tuple(entry.mig_devices)), []


def _chosen_entries(
    gpus: Sequence[GpuState], entries: Sequence[ConfigEntryLike]
) -> tuple[dict[int, ConfigEntryLike], list[str]]:
    """The entry that governs each GPU (later entries win), and the non-MIG problems."""
    problems: list[str] = []
    chosen: dict[int, ConfigEntryLike] = {}
    for entry in entries:
        for gpu in gpus:
            if not gpu.readable:
                # Nothing is known to select on or resolve against; the plan marks
                # such a GPU UNREADABLE (it is reported FAILED), and no entry governs it.
                continue
            if not entry.matches(gpu.index, gpu.pci_device_id, gpu.pci_subsystem_id):
                continue
            if not gpu.mig_capable:
                # mig-parted: skipped for 'devices: all' or MIG off, an error when MIG is
                # asked of this GPU by its index.
                if entry.mig_enabled and entry.devices != "all":
                    problems.append(
                        f"{entry.path} (line {entry.line}): {gpu_label(gpu)} is not "
                        "MIG-capable but the entry enables MIG on it by index"
                    )
                continue
            chosen[gpu.index] = entry
    return chosen, problems


def desired_layouts(
    snapshot: NodeSnapshot, entries: Sequence[ConfigEntryLike]
) -> tuple[DesiredGpu, ...]:
    """The layout of every GPU the selected config covers, by GPU index.

    GPUs no entry covers, GPUs without MIG that are skipped and unreadable GPUs get no
    DesiredGpu.
    Raises SelectionError (an InvalidRequest) listing every problem found, located as
    ``FILE:LINE:COL: key.path:`` where the entries know their file; a problem shared by
    several GPUs of one model is reported once, naming them all.
    """
    gpus = sorted(snapshot.gpus, key=lambda g: g.index)
    chosen, problems = _chosen_entries(gpus, entries)
    layouts = []
    # One message per entry, model and problem: "GPUs 0-7 (NVIDIA H200): ...".
    shared: dict[tuple[int, str, str], tuple[ConfigEntryLike, list[int]]] = {}
    for gpu in gpus:
        if gpu.index not in chosen:
            continue
        entry = chosen[gpu.index]
        desired, found = _layout(gpu, entry)
        for detail in found:
            shared.setdefault((id(entry), gpu.name, detail), (entry, []))[1].append(gpu.index)
        if desired is not None:
            layouts.append(desired)
    for (_, name, detail), (entry, indices) in shared.items():
        message = f"{_gpu_list(indices)} ({name}): {detail}"
        if entry.source:
            problems.append(f"{entry.source}:{entry.line}:{entry.column}: {entry.path}: {message}")
        else:
            problems.append(f"{entry.path} (line {entry.line}): {message}")
    if problems:
        raise SelectionError(problems)
    return tuple(layouts)


def _gpu_list(indices: Sequence[int]) -> str:
    """``GPU 3``, ``GPUs 0-7`` or ``GPUs 0, 2, 5``."""
    if len(indices) == 1:
        return f"GPU {indices[0]}"
    ordered = sorted(indices)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"GPUs {ordered[0]}-{ordered[-1]}"
    return "GPUs " + ", ".join(str(i) for i in ordered)


def model_fit_problems(
    entries: Sequence[ConfigEntryLike], gpu: GpuState
) -> tuple[tuple[ConfigEntryLike, str], ...]:
    """Every problem the entries would meet on a node made only of GPUs like ``gpu``.

    The node has one GPU per index the entries name (at least one), so later entries
    win exactly as on a real node; each problem is reported once per entry, without
    naming the entry or the GPU, since the caller names both.
    A MIG-enabled entry that would govern a GPU without MIG is a problem here.
    """
    indices = [i for e in entries if e.devices != "all" for i in e.devices]
    gpus = [replace(gpu, index=i) for i in range(max(indices, default=0) + 1)]
    chosen, _ = _chosen_entries([replace(g, mig_capable=True) for g in gpus], entries)
    found: dict[tuple[int, str], tuple[ConfigEntryLike, str]] = {}
    for node_gpu in gpus:
        entry = chosen.get(node_gpu.index)
        if entry is None or not entry.mig_enabled:
            continue
        if not node_gpu.mig_capable:
            problems = [f"{gpu.name} is not MIG-capable"]
        else:
            problems = _layout(node_gpu, entry)[1]
        for text in problems:
            found.setdefault((id(entry), text), (entry, text))
    return tuple(found.values())
