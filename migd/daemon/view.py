"""What the daemon publishes about itself: one immutable view, replaced as a whole.

The main loop builds a new ``DaemonView`` after every event and hands it to its
observers (the runtime state file behind ``migd status``, the metrics collector,
systemd's ``STATUS=``). Nobody else keeps a parallel copy of this state.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from migd.core.layout import DesiredGpu, NodeSnapshot
from migd.gpu.executor import ReconcileResult

log = logging.getLogger("migd.daemon.view")


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
    contested: bool = False  # another controller keeps changing it; migd leaves it alone


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


class DaemonObserver(Protocol):
    """Receives what the loop decides to publish; must never block the loop for long.

    The loop calls these methods, and nothing else, on every observer. Each does
    nothing by default: an observer subclasses this protocol and overrides the events
    it needs.
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

    def drifted(self, gpu: int) -> None:
        """A drift check found GPU ``gpu`` changed behind migd's back (once per change)."""


class Observers(DaemonObserver):
    """Every observer of one daemon, as one: each event goes to all of them, in order.

    An observer that raises is logged and the others still hear the event: a broken
    status file or metric must not stop the loop that keeps the GPUs right.
    """

    def __init__(self, observers: Sequence[DaemonObserver]) -> None:
        self._observers = tuple(observers)

    def published(self, view: DaemonView) -> None:
        self._each("published", lambda o: o.published(view))

    def reconciled(self, trigger: Trigger, result: ReconcileResult) -> None:
        self._each("reconciled", lambda o: o.reconciled(trigger, result))

    def reconcile_failed(self, trigger: Trigger, reason: str) -> None:
        self._each("reconcile_failed", lambda o: o.reconcile_failed(trigger, reason))

    def reload_attempted(self, ok: bool) -> None:
        self._each("reload_attempted", lambda o: o.reload_attempted(ok))

    def drifted(self, gpu: int) -> None:
        self._each("drifted", lambda o: o.drifted(gpu))

    def _each(self, event: str, tell: Callable[[DaemonObserver], None]) -> None:
        for observer in self._observers:
            try:
                tell(observer)
            except Exception:
                log.exception("observer %s.%s failed", type(observer).__name__, event)


class LateObserver(DaemonObserver):
    """Stands in for an observer that is set up after the daemon has started (the
    metrics endpoint, loaded after READY=1): the events before ``attach`` are kept and
    told to the observer on attaching, so it misses none of them; later ones go
    straight through. Only the last view is kept, as it replaces the ones before it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: DaemonObserver | None = None
        self._view: DaemonView | None = None
        self._kept: list[Callable[[DaemonObserver], None]] = []
        self._dropped = False

    def drop(self) -> None:
        """The observer will never come (it could not be set up): forget and ignore."""
        with self._lock:
            self._kept, self._view, self._dropped = [], None, True

    def attach(self, observer: DaemonObserver) -> None:
        with self._lock:
            for tell in self._kept:
                tell(observer)
            if self._view is not None:
                observer.published(self._view)
            self._kept, self._view, self._target = [], None, observer

    def published(self, view: DaemonView) -> None:
        with self._lock:
            if self._dropped:
                return
            if self._target is None:
                self._view = view
                return
        self._target.published(view)

    def reconciled(self, trigger: Trigger, result: ReconcileResult) -> None:
        self._tell(lambda o: o.reconciled(trigger, result))

    def reconcile_failed(self, trigger: Trigger, reason: str) -> None:
        self._tell(lambda o: o.reconcile_failed(trigger, reason))

    def reload_attempted(self, ok: bool) -> None:
        self._tell(lambda o: o.reload_attempted(ok))

    def drifted(self, gpu: int) -> None:
        self._tell(lambda o: o.drifted(gpu))

    def _tell(self, tell: Callable[[DaemonObserver], None]) -> None:
        with self._lock:
            if self._dropped:
                return
            if self._target is None:
                self._kept.append(tell)
                return
        tell(self._target)
