"""Executes plans through the NVML adapter: checkpoint, act, verify, roll back.

(Interface fixed first so the daemon, the metrics and the verbs can be built against
it; the body lands with the reconciler.)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from migd.errors import (
    EXIT_BLOCKED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REBOOT_REQUIRED,
)
from migd.layout import DesiredGpu, NodeSnapshot


class GpuOutcome(enum.Enum):
    """How one GPU ended a reconcile. Ordered from best to worst for ``worst()``."""

    NOOP = "noop"  # already right, nothing done
    APPLIED = "applied"  # changed and verified
    SKIPPED = "skipped"  # not covered by the selected config, or not MIG-capable
    BLOCKED = "blocked"  # would destroy an instance with a running process; unchanged
    REBOOT_REQUIRED = "reboot_required"  # mode change pending and the GPU cannot be reset
    FAILED = "failed"  # a step failed; GPU restored to its checkpoint


_SEVERITY = {
    GpuOutcome.NOOP: 0,
    GpuOutcome.SKIPPED: 0,
    GpuOutcome.APPLIED: 1,
    GpuOutcome.BLOCKED: 2,
    GpuOutcome.REBOOT_REQUIRED: 3,
    GpuOutcome.FAILED: 4,
}

_EXIT = {
    GpuOutcome.NOOP: EXIT_OK,
    GpuOutcome.SKIPPED: EXIT_OK,
    GpuOutcome.APPLIED: EXIT_OK,
    GpuOutcome.BLOCKED: EXIT_BLOCKED,
    GpuOutcome.REBOOT_REQUIRED: EXIT_REBOOT_REQUIRED,
    GpuOutcome.FAILED: EXIT_FAILED,
}


@dataclass(frozen=True)
class GpuResult:
    index: int
    outcome: GpuOutcome
    reason: str = ""  # one sentence for an operator; empty when all went well
    error: str | None = None  # bounded label: NVML error name (IN_USE) or a migd reason word
    mutations: int = 0  # mutating NVML calls issued for this GPU
    reset: bool = False  # the GPU was reset to activate a mode change


@dataclass(frozen=True)
class ReconcileResult:
    config_name: str
    gpus: tuple[GpuResult, ...]
    desired: tuple[DesiredGpu, ...]
    snapshot: NodeSnapshot  # the node as re-read after acting
    duration_seconds: float = 0.0

    def worst(self) -> GpuOutcome:
        if not self.gpus:
            return GpuOutcome.NOOP
        return max((g.outcome for g in self.gpus), key=lambda o: _SEVERITY[o])

    @property
    def changed(self) -> bool:
        return any(g.outcome is GpuOutcome.APPLIED for g in self.gpus)

    @property
    def exit_code(self) -> int:
        return _EXIT[self.worst()]


@dataclass(frozen=True)
class ReconcileOptions:
    force: bool = False  # destroy busy instances (the only way to)
    mode_only: bool = False  # -m: set MIG mode, leave instances alone
    skip_reset: bool = False  # -s: never reset a GPU to activate a pending mode change
    parallel: bool = True  # GPUs in parallel (NVML is thread-safe)
    # argv of the reset command; "{bus_ids}" expands to the bus ids of the GPUs to reset
    reset_command: tuple[str, ...] = ("nvidia-smi", "-r", "-i", "{bus_ids}")
    progress: Callable[[str], None] | None = field(default=None, compare=False)
