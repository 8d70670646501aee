"""Whether GPUs hold what they should, and what changed: ``migd assert`` and drift.

Pure. A GPU holds its desired layout when its MIG mode (current and pending) is the
wanted one and its GPU instances, each with its compute instances, are the wanted
ones, wherever they sit. A GPU that could not be read never counts as right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from migd.core.layout import DesiredGpu, GpuInstance, GpuState, NodeSnapshot, gi_spec
from migd.core.names import describe, describe_current, spec_names


def layout_matches(gpu: GpuState, desired: DesiredGpu) -> bool:
    """Whether ``gpu`` already holds ``desired``: mode (current and pending) and instances."""
    if not gpu.mig_capable:
        return not desired.mig_enabled
    if gpu.mig_enabled != desired.mig_enabled or gpu.mig_pending != desired.mig_enabled:
        return False
    return sorted(gi_spec(gi) for gi in gpu.instances) == sorted(desired.instances)


def mode_matches(gpu: GpuState, enabled: bool) -> bool:
    """Whether the GPU's MIG mode is ``enabled``, with no change pending."""
    return gpu.mig_enabled == gpu.mig_pending == enabled


@dataclass(frozen=True)
class Mismatch:
    """One GPU that does not hold its desired layout, or could not be read at all."""

    index: int
    holds: str  # "1g.18gb×6", "MIG disabled (enable pending)"; empty when unreadable
    wants: str  # "1g.18gb×7"; empty when unreadable
    unreadable: str = ""  # "unreadable: GPU_IS_LOST (nvmlDeviceGetHandleByIndex)"

    @property
    def readable(self) -> bool:
        return not self.unreadable


def mismatches(
    snapshot: NodeSnapshot, desired: Sequence[DesiredGpu], *, mode_only: bool = False
) -> tuple[Mismatch, ...]:
    """The GPUs of ``snapshot`` that differ from their desired layout, and every GPU that
    could not be read (its layout cannot be known to be right), unreadable ones first.

    Only GPUs with a desired layout are judged; ``mode_only`` compares the MIG mode.
    """
    found = [
        Mismatch(g.index, "", "", unreadable=g.unreadable_reason)
        for g in snapshot.gpus
        if not g.readable
    ]
    for want in desired:
        gpu = snapshot.gpu(want.index)
        if not gpu.readable:
            continue
        same = mode_matches(gpu, want.mig_enabled) if mode_only else layout_matches(gpu, want)
        if not same:
            found.append(Mismatch(gpu.index, describe_current(gpu), describe(gpu, want)))
    return tuple(found)


def _mode_word(enabled: bool) -> str:
    return "enabled" if enabled else "disabled"


def gpu_changes(before: GpuState, after: GpuState) -> tuple[str, ...]:
    """What changed on one GPU between two reads, in words: MIG mode, instances that
    appeared or disappeared (a GI whose compute instances changed counts as both).

    Empty when nothing changed, or when either read could not see the GPU's content.
    """
    if not (before.readable and after.readable):
        return ()
    changes = []
    if before.mig_enabled != after.mig_enabled:
        changes.append(
            f"MIG mode changed from {_mode_word(before.mig_enabled)} to "
            f"{_mode_word(after.mig_enabled)}"
        )
    if before.mig_pending != after.mig_pending and after.mode_change_pending:
        changes.append(f"MIG mode change to {_mode_word(after.mig_pending)} pending")

    def label(gpu: GpuState, gi: GpuInstance) -> str:
        names = "+".join(spec_names(gpu, gi_spec(gi)))
        return f"GI {gi.id} ({names} at {gi.placement})"

    old = {label(before, gi): gi.id for gi in before.instances}
    new = {label(after, gi): gi.id for gi in after.instances}
    changes += [f"{gi} disappeared" for gi in sorted(old.keys() - new, key=old.__getitem__)]
    changes += [f"{gi} appeared" for gi in sorted(new.keys() - old, key=new.__getitem__)]
    return tuple(changes)
