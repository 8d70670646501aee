"""How migd names what a GPU holds or should hold, in the config's own terms.

A GI holding its full compute instance is named by its GI profile (``2g.35gb``); a GI
holding partial compute instances by one ``1c.2g.35gb``-style name per CI. Layouts are
written as counts, smallest profiles first (``1g.18gb×2+2g.35gb+3g.71gb``): in logs,
``STATUS=``, ``migd plan``, ``migd status``, the metrics' ``profile`` label and the
configs ``migd export`` writes. Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from migd.core.layout import DesiredGpu, GiProfile, GiSpec, GpuState, gi_spec
from migd.core.profiles import ProfileName, ProfileNameError


def ci_name(gi: GiProfile, ci_id: int) -> str:
    """The name of CI profile ``ci_id`` in GI profile ``gi``, or a readable stand-in."""
    ci = gi.ci_profile(ci_id)
    return ci.name if ci is not None else f"{gi.name} CI profile {ci_id}"


def profile_label(gpu: GpuState, profile_id: int) -> str:
    """The name of GI profile ``profile_id`` on ``gpu``, or a readable stand-in if unknown."""
    profile = gpu.profile_by_id(profile_id)
    return profile.name if profile is not None else f"GI profile {profile_id}"


def spec_names(gpu: GpuState, spec: GiSpec) -> tuple[str, ...]:
    """The config names one GI stands for.

    A GI holding just its full CI (or no CI at all) is its GI profile name
    (``2g.35gb``); a GI holding partial CIs is one ``1c.2g.35gb``-style name per CI.
    """
    profile = gpu.profile_by_id(spec.profile_id)
    if profile is None:
        return (f"GI profile {spec.profile_id}",)
    full = profile.full_ci()
    if not spec.ci_profile_ids or (full is not None and spec.ci_profile_ids == (full.id,)):
        return (profile.name,)
    return tuple(ci_name(profile, ci_id) for ci_id in spec.ci_profile_ids)


def name_order(name: str) -> tuple[int, int, int, str]:
    """Sort key for profile names: by GI size, memory, then CI size (unparsable ones last)."""
    try:
        parsed = ProfileName.parse(name)
    except ProfileNameError:
        return (1 << 30, 0, 0, name)
    ci = parsed.ci_slices if parsed.ci_slices is not None else parsed.gi_slices
    return (parsed.gi_slices, parsed.memory_gb or 0, ci, name)


def layout_counts(gpu: GpuState, specs: Iterable[GiSpec]) -> tuple[tuple[str, int], ...]:
    """Profile name → count over ``specs``, smallest profiles first (see :func:`spec_names`)."""
    counts = Counter(name for spec in specs for name in spec_names(gpu, spec))
    return tuple((name, counts[name]) for name in sorted(counts, key=name_order))


def format_counts(counts: Sequence[tuple[str, int]]) -> str:
    """``1g.18gb×2+2g.35gb``; ``no instances`` for an empty layout."""
    if not counts:
        return "no instances"
    return "+".join(name if n == 1 else f"{name}×{n}" for name, n in counts)


def observed_layout(gpu: GpuState) -> tuple[tuple[str, int], ...]:
    """What ``gpu`` holds as profile name → count, in the config's own terms (for export).

    Round-trips through selection when partial CIs are packed as densely as
    selection packs them; a GI with no CI at all is named like a whole GI.
    """
    return layout_counts(gpu, (gi_spec(gi) for gi in gpu.instances))


def describe(gpu: GpuState, desired: DesiredGpu) -> str:
    """A layout in one line for logs and STATUS: ``1g.18gb×2+2g.35gb+3g.71gb``."""
    if not desired.mig_enabled:
        return "MIG disabled"
    return format_counts(layout_counts(gpu, desired.instances))


def describe_current(gpu: GpuState) -> str:
    """What a GPU holds in one line: ``1g.18gb×2+3g.71gb``, ``MIG disabled (enable pending)``."""
    if not gpu.mig_capable:
        return "not MIG-capable"
    if not gpu.mig_enabled:
        return "MIG disabled" + (" (enable pending)" if gpu.mig_pending else "")
    pending = " (disable pending)" if not gpu.mig_pending else ""
    return format_counts(observed_layout(gpu)) + pending
