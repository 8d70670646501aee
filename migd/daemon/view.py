"""What the daemon publishes about itself: one immutable view, replaced as a whole.

The main loop builds a new ``DaemonView`` after every event and hands it to its
observers (the runtime state file behind ``migd status``, the metrics collector,
systemd's ``STATUS=``). Nobody else keeps a parallel copy of this state.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from migd.core.layout import DesiredGpu, NodeSnapshot
from migd.gpu.executor import ReconcileResult


class Phase(enum.Enum):
    STARTING = "starting"
    APPLYING = "applying"
    READY = "ready"  # every GPU covered by the config is in sync
    DEGRADED = "degraded"  # running, but some GPU is blocked, failed or needs a reboot
    STOPPING = "stopping"


class Trigger(enum.Enum):
    """Why a reconcile ran (the ``trigger`` label of migd_reconciles_total)."""

    STARTUP = "startup"
    RELOAD = "reload"
    FILE = "file"
    DRIFT = "drift"
    RETRY = "retry"


@dataclass(frozen=True)
class GpuView:
    index: int
    in_sync: bool
    outcome: str  # GpuOutcome value of the last reconcile, "" before the first
    reason: str = ""  # why it is not in sync (blocked by pid 4242, …)
    reboot_required: bool = False


@dataclass(frozen=True)
class DaemonView:
    pid: int
    phase: Phase
    status_line: str  # the sentence shown in STATUS= and `migd status`
    config_file: str
    selected_config: str | None = None
    config_digest: str | None = None
    last_reload_ok: bool = True
    last_reload_error: str = ""  # the refused file's problems, file:line: key: message
    last_reload_success_time: float | None = None  # wall clock
    last_reconcile_time: float | None = None
    last_success_time: float | None = None
    last_error: str = ""
    reload_generation: int = 0  # bumped by every reload request, however triggered
    gpus: tuple[GpuView, ...] = ()
    snapshot: NodeSnapshot | None = None  # latest node snapshot (for the inventory)
    desired: tuple[DesiredGpu, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)  # e.g. strategy check results


class DaemonObserver:
    """Receives what the loop decides to publish; must never block the loop for long.

    Every event does nothing by default: an observer overrides the ones it needs.
    """

    def published(self, view: DaemonView) -> None:
        """A new view of the daemon (after every event that changed it)."""

    def reconciled(self, trigger: Trigger, result: ReconcileResult) -> None:
        """A reconcile reached a result, GPU by GPU."""

    def reconcile_failed(self, trigger: Trigger, reason: str) -> None:
        """A reconcile failed as a whole, before any GPU result (the node could not be
        read, say). ``reason`` is a bounded word: an NVML error name or ``error``."""

    def reload_attempted(self, ok: bool) -> None:
        """A config (re)load was accepted or refused."""
