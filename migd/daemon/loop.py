"""The daemon behind ``migd run``: one loop decides; everything else only reports to it.

Signal handlers, the config watcher and the worker thread never act. They put an
event on one queue: ``queue.SimpleQueue``, whose ``put`` is safe inside a signal
handler and wakes a ``get`` blocked in the main thread, so it is gunicorn's signal
queue and self-pipe in one. The loop takes events with a timeout set by its nearest
timer (watchdog ping, debounce, drift check, retry), handles each in one small
method, decides what to do next and publishes a new ``DaemonView`` to its observers
(the state file, systemd's ``STATUS=``, metrics) whenever anything changed.

NVML work (a reconcile, a drift check) runs in one worker thread, one job at a time,
so the loop stays responsive while a GPU is being changed: it keeps pinging the
watchdog, and a SIGTERM is answered at once with ``STOPPING=1``. The worker reports
back with an event; only the loop acts on the outcome. A stop waits for the job in
progress: the executor is bounded and finishes or rolls back each GPU it started,
so no GPU is ever left half-built. Nothing new starts after ``STOPPING=1``.

systemd sees (sd_notify):

- ``READY=1`` once the first reconcile has a definitive outcome (or, with
  boot-policy ``continue``, once an invalid config has been refused);
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` when a reload is taken up, whatever
  triggered it (SIGHUP, ``migd reload``, a file edit), and ``READY=1`` when its
  outcome is known;
- ``STATUS=`` lines for every change of the published status;
- ``EXTEND_TIMEOUT_USEC=`` for each step of a long change;
- ``WATCHDOG=1`` every half interval, withheld while an NVML call has been
  outstanding for longer than that, so a daemon wedged in the driver is restarted;
- ``STOPPING=1`` on SIGTERM.

None of these waits for systemd: a notify socket nobody reads holds them
(``migd.daemon.notify.Notifier``) and the loop sends them, in order, once it is read again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from migd.core.compare import gpu_changes, mismatches
from migd.core.config import BootPolicy, Config, Settings, select_config
from migd.core.layout import DesiredGpu, NodeSnapshot
from migd.core.selection import desired_layouts
from migd.daemon.notify import Notifier, SystemdStatus
from migd.daemon.runtime import ReloadAnswer, RuntimeDir, StateFile
from migd.daemon.view import DaemonObserver, DaemonView, GpuView, Observers, Phase, Trigger
from migd.daemon.watch import ConfigWatcher, file_digest
from migd.errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    ConfigError,
    InvalidRequest,
    MigdError,
    NvmlError,
)
from migd.formats.config_file import load_config
from migd.gpu.executor import GpuOutcome, ReconcileOptions, ReconcileResult, format_result
from migd.gpu.nvml import NvmlAdapter
from migd.node.change import NodeServices, apply_with_services
from migd.node.lock import NodeLock
from migd.node.strategy import strategy_extra

log = logging.getLogger("migd.daemon.loop")

# Editors and ConfigMap updates touch the directory several times per save.
DEBOUNCE_SECONDS = 0.2
# ...but never longer than this after the first event: other files written in the same
# directory all the time (a log, a lock file) must not put the check off for ever.
DEBOUNCE_MAX_SECONDS = 1.0
# The config watcher and the metrics endpoint start after READY=1, or this long after the
# start when the first reconcile takes longer (a boot that lays the GPUs out): edits and
# scrapes during a long first apply are then seen and answered.
SETTLE_IN_SECONDS = 1.0
# What systemd is asked to grant for each step of a change (EXTEND_TIMEOUT_USEC): a
# MIG mode change with a GPU reset takes minutes on real hardware.
STEP_TIMEOUT_SECONDS = 300.0
# The outcomes after which a GPU holds what its config wants (or nothing is wanted).
IN_SYNC = frozenset({GpuOutcome.NOOP, GpuOutcome.APPLIED, GpuOutcome.SKIPPED})
# The outcomes worth trying again without an edit: a failed step may be transient,
# and the process that blocks a GPU may end. A pending reboot will not go away.
RETRIED = frozenset({GpuOutcome.FAILED, GpuOutcome.BLOCKED})


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """A valid config and the name of the mig-config this node applies from it."""

    config: Config
    name: str
    # The hooks, GPU client units and refreshes around a change (migd.node.change).
    services: NodeServices = field(default_factory=NodeServices)

    @property
    def settings(self) -> Settings:
        return self.config.settings


def load_selected(path: str, cli_name: str | None, environ: Mapping[str, str]) -> Loaded:
    """Read, validate and select the config; ConfigError when it cannot be used.

    The hooks and gpu-clients files it names are read too: a bad one refuses the config.
    """
    config = load_config(path)
    name = select_config(config, cli_name, environ)
    return Loaded(config, name, NodeServices.from_settings(config.settings))


@dataclass(frozen=True)
class Drift:
    """One GPU that no longer holds what the config wants."""

    index: int
    text: str  # "holds 1g.18gb×6, config wants 1g.18gb×7"
    # False for a GPU that could not be read: a reconcile cannot repair it (it reports
    # it FAILED), so drift repair waits for a GPU it can act on.
    repairable: bool = True
    # What changed since migd last looked ("GI 3 (1g.18gb at 0:1) disappeared"); empty
    # when nothing did (the GPU was already found drifted, and stayed so).
    changes: tuple[str, ...] = ()

    def describe(self) -> str:
        changed = "; ".join(self.changes)
        return f"{self.text} ({changed})" if changed else self.text


@dataclass(frozen=True)
class DriftReport:
    snapshot: NodeSnapshot
    desired: tuple[DesiredGpu, ...]
    drifted: tuple[Drift, ...]


@dataclass(frozen=True)
class CheckSkipped:
    """A drift check not made: a change by someone else (``--override-daemon``) holds the
    node lock, and a half-made change is no drift. That change asks for a check when done."""

    holder: str


def find_drift(snapshot: NodeSnapshot, desired: Sequence[DesiredGpu]) -> tuple[Drift, ...]:
    """The GPUs of ``snapshot`` that differ from their desired layout, or are unreadable."""
    return tuple(
        Drift(m.index, f"holds {m.holds}, config wants {m.wants}")
        if m.readable
        else Drift(m.index, m.unreadable, repairable=False)
        for m in mismatches(snapshot, desired)
    )


@dataclass(frozen=True)
class DaemonOptions:
    """How ``migd run`` was asked to run (the config file itself says the rest)."""

    config_file: str
    config_name: str | None = None  # -c; else the environment or the file selects
    environ: Mapping[str, str] = field(default_factory=dict)
    boot_policy: BootPolicy | None = None  # overrides the file's (which an invalid file lacks)
    reset_command: Callable[[Config], tuple[str, ...]] | None = None  # None: the config's
    watchdog_interval: float | None = None  # WATCHDOG_USEC, in seconds


# ---------------------------------------------------------------------------
# What the worker does (the NVML side), behind one small interface
# ---------------------------------------------------------------------------


class Gpus(Protocol):
    """The node's GPUs as the worker thread acts on them. Only the worker calls the first two.

    ``leave_alone``: GPUs a reconcile must not touch (contested ones), as if the config
    did not cover them.
    """

    def reconcile(
        self,
        loaded: Loaded,
        options: ReconcileOptions,
        *,
        post_boot: bool = False,
        leave_alone: frozenset[int] = frozenset(),
    ) -> ReconcileResult: ...

    def check(self, loaded: Loaded) -> DriftReport | CheckSkipped: ...

    def oldest_call_started(self) -> float | None:
        """``time.monotonic()`` at which the oldest NVML call in flight began; any thread."""
        ...

    def close(self) -> None: ...


class NvmlGpus:
    """The real GPUs: NVML opened once, on first use, and kept open for the daemon's life.

    A job that fails with an exception closes NVML, so the next attempt starts from a
    fresh ``nvmlInit`` (the driver may have been reloaded under us). With ``node``, a
    reconcile holds the node lock (waiting, unbounded, for a change by another process)
    and a drift check is skipped while someone else holds it.
    """

    def __init__(
        self,
        on_error: Callable[[str, str], None] | None = None,
        *,
        node: NodeLock | None = None,
    ) -> None:
        self._on_error = on_error
        self._node = node
        self._stack = contextlib.ExitStack()
        self._adapter: NvmlAdapter | None = None
        self._opening_since: float | None = None

    @contextlib.contextmanager
    def _nvml(self) -> Iterator[NvmlAdapter]:
        if self._adapter is None:
            # nvmlInit itself can hang in a wedged driver: count it as a call in flight.
            self._opening_since = time.monotonic()
            try:
                self._adapter = self._stack.enter_context(
                    NvmlAdapter.open(read_only=False, on_error=self._on_error)
                )
            finally:
                self._opening_since = None
        try:
            yield self._adapter
        except (ConfigError, InvalidRequest):
            raise  # a config that does not fit this node says nothing about NVML
        except BaseException:
            self.close()
            raise

    def reconcile(
        self,
        loaded: Loaded,
        options: ReconcileOptions,
        *,
        post_boot: bool = False,
        leave_alone: frozenset[int] = frozenset(),
    ) -> ReconcileResult:
        held = (
            self._node.hold("migd run", timeout=None, on_wait=options.progress)
            if self._node is not None
            else contextlib.nullcontext()
        )
        with held, self._nvml() as nvml:
            report = apply_with_services(
                nvml,
                loaded.config,
                loaded.name,
                options,
                loaded.services,
                post_boot=post_boot,
                leave_alone=leave_alone,
            )
        for line in report.lines():
            log.info("%s", line)
        assert report.result is not None  # a report without one is raised (ChangeAborted)
        return report.result

    def check(self, loaded: Loaded) -> DriftReport | CheckSkipped:
        held = (
            self._node.attempt("migd run (drift check)")
            if self._node is not None
            else contextlib.nullcontext(None)
        )
        with held as holder:
            if holder is not None:
                return CheckSkipped(holder)
            with self._nvml() as nvml:
                snapshot = nvml.snapshot()
        desired = desired_layouts(snapshot, loaded.config.entries(loaded.name))
        return DriftReport(snapshot, desired, find_drift(snapshot, desired))

    def oldest_call_started(self) -> float | None:
        adapter = self._adapter
        if adapter is not None:
            return adapter.oldest_call_started()
        return self._opening_since

    def close(self) -> None:
        self._adapter = None
        try:
            self._stack.close()
        except MigdError as exc:
            log.warning("closing NVML: %s", exc)
        self._stack = contextlib.ExitStack()


# ---------------------------------------------------------------------------
# Events and jobs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReloadSignal:
    """SIGHUP: reload the config (``migd reload`` sends it too)."""


@dataclass(frozen=True)
class StopSignal:
    signum: int


@dataclass(frozen=True)
class CheckNow:
    """SIGUSR1: look at the GPUs now (a one-shot verb changed them under the daemon)."""


@dataclass(frozen=True)
class ConfigTouched:
    """The watcher saw something change where the config file lives."""


@dataclass(frozen=True)
class Progress:
    line: str


@dataclass(frozen=True)
class ReconcileJob:
    trigger: Trigger
    loaded: Loaded
    reload: bool = False  # completes a reload: READY=1 and the answers when done
    tokens: tuple[str, ...] = ()  # `migd reload` requests this job answers

    def describe(self) -> str:
        return f"the {self.trigger.value} reconcile of {self.loaded.name}"


@dataclass(frozen=True)
class DriftJob:
    loaded: Loaded

    def describe(self) -> str:
        return f"the drift check of {self.loaded.name}"


Job = ReconcileJob | DriftJob


@dataclass(frozen=True)
class JobDone:
    job: Job
    value: ReconcileResult | DriftReport | CheckSkipped | None
    error: BaseException | None


Event = ReloadSignal | StopSignal | CheckNow | ConfigTouched | Progress | JobDone


@contextlib.contextmanager
def signal_handlers(post: Callable[[Event], None]) -> Iterator[None]:
    """SIGHUP, SIGUSR1, SIGTERM and SIGINT post events while the block runs (main thread only)."""
    handlers = {
        signal.SIGHUP: lambda signum, frame: post(ReloadSignal()),
        signal.SIGUSR1: lambda signum, frame: post(CheckNow()),
        signal.SIGTERM: lambda signum, frame: post(StopSignal(signum)),
        signal.SIGINT: lambda signum, frame: post(StopSignal(signum)),
    }
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


class Daemon:
    """One daemon run. Everything below ``run`` executes in the loop's thread only.

    ``startup`` is the config as read before the loop started (the caller needed its
    settings to set up observers), or the error that made it unusable.
    """

    def __init__(
        self,
        options: DaemonOptions,
        gpus: Gpus,
        startup: Loaded | ConfigError,
        *,
        runtime: RuntimeDir,
        notifier: Notifier,
        observers: Sequence[DaemonObserver] = (),
        after_start: Sequence[Callable[[], object]] = (),
    ) -> None:
        self._options = options
        self._gpus = gpus
        self._startup = startup
        self._runtime = runtime
        self._notifier = notifier
        self._observers = Observers((StateFile(runtime), SystemdStatus(notifier), *observers))
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._pid = os.getpid()

        # The config in force and how the last reload went.
        self._loaded: Loaded | None = None
        self._refusal = ""  # every problem of the config last refused, one per line
        self._reload_success_time: float | None = None
        self._generation = 0
        # Which config content the loop has last read (a touch that keeps it is no change).
        self._seen_digest = (
            startup.config.digest
            if isinstance(startup, Loaded)
            else file_digest(options.config_file)
        )

        # What the node looked like at the last look, and how the last reconcile went.
        self._result: ReconcileResult | None = None
        # The config (name, file digest) that result was reached for: after a reconcile
        # under another config raised, the result says nothing about the config in force.
        self._result_config: tuple[str, str] | None = None
        self._snapshot: NodeSnapshot | None = None
        self._desired: tuple[DesiredGpu, ...] = ()
        self._drift: tuple[Drift, ...] = ()
        self._failure = ""  # why the last reconcile raised, until one succeeds
        self._check_failure = ""  # why the last drift check raised, until one succeeds
        self._last_reconcile_time: float | None = None
        self._last_success_time: float | None = None
        # The tug of war with another controller: when each GPU's drift repairs began
        # (time.monotonic(), within the window), and the GPUs migd stopped repairing.
        self._repairs: dict[int, tuple[float, ...]] = {}
        self._contested: dict[int, str] = {}

        # Work in progress and work wanted.
        self._job: Job | None = None
        self._progress = ""
        self._reload_wanted: Trigger | None = None
        self._file_due: float | None = None
        self._file_first_touch = 0.0
        self._retry_at: float | None = None
        self._retry_delay: float | None = None  # the delay before the next retry after this one
        self._retry_in = 0.0  # the delay of the retry now scheduled (for the status line)
        self._drift_at: float | None = None
        self._check_wanted = False  # SIGUSR1: a drift check as soon as no job runs
        self._watchdog_at = 0.0
        self._wedged_since: float | None = None

        # What waits until READY=1 (or SETTLE_IN_SECONDS after the start, if the first
        # reconcile takes that long): the config watcher and ``after_start``.
        self._after_start = tuple(after_start)
        self._settle_in_at: float | None = time.monotonic() + SETTLE_IN_SECONDS
        self._watcher: ConfigWatcher | None = None

        self._ready_sent = False
        self._stopping = False
        self._exit_code: int | None = None
        self._published: DaemonView | None = None

    # -- entry points --------------------------------------------------------------------

    def post(self, event: Event) -> None:
        """Hand an event to the loop; safe from any thread and from a signal handler."""
        self._events.put(event)

    def run(self) -> int:
        """Run until SIGTERM (exit 0) or a startup failure under boot-policy strict."""
        with signal_handlers(self.post):
            try:
                self._publish()
                self._take_up(Trigger.STARTUP, self._startup, ())
                self._loop()
                self._notifier.flush()  # a last chance for STOPPING=1 and the last status
            finally:
                if self._watcher is not None:
                    self._watcher.stop()
                if self._job is None:
                    self._gpus.close()
        code = EXIT_OK if self._exit_code is None else self._exit_code
        log.info("migd exits with status %d", code)
        return code

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            # What systemd could not take before (its socket was full) goes first, in order.
            self._notifier.flush()
            self._fire_timers(now)
            self._start_due_work(now)
            self._publish()
            if self._exit_code is not None or (self._stopping and self._job is None):
                return
            try:
                event: Event | None = self._events.get(timeout=self._timeout(now))
            except queue.Empty:
                event = None
            while event is not None:
                self._handle(event)
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    event = None

    def _timeout(self, now: float) -> float | None:
        deadlines = [self._file_due, self._settle_in_at]
        if self._watchdog_interval is not None:
            deadlines.append(self._watchdog_at)
        if self._job is None and not self._stopping:
            deadlines += [self._retry_at, self._drift_at]
            if self._check_wanted and self._loaded is not None:
                deadlines.append(now)
        if self._notifier.holding:
            deadlines.append(now + self._notifier.RETRY_SECONDS)
        due = [d for d in deadlines if d is not None]
        return max(0.0, min(due) - now) if due else None

    @property
    def _watchdog_interval(self) -> float | None:
        return self._options.watchdog_interval

    # -- events ----------------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        if isinstance(event, JobDone):
            self._job_done(event)
        elif isinstance(event, Progress):
            self._on_progress(event.line)
        elif isinstance(event, ReloadSignal):
            log.info("SIGHUP: reload requested")
            self._reload_wanted = Trigger.RELOAD
        elif isinstance(event, CheckNow):
            log.info("SIGUSR1: checking the GPUs now")
            self._check_wanted = True
        elif isinstance(event, ConfigTouched):
            now = time.monotonic()
            if self._file_due is None:
                self._file_first_touch = now
            self._file_due = min(
                now + DEBOUNCE_SECONDS, self._file_first_touch + DEBOUNCE_MAX_SECONDS
            )
        elif isinstance(event, StopSignal):
            self._on_stop(event.signum)

    def _on_progress(self, line: str) -> None:
        log.info("%s", line)
        self._progress = line
        self._notifier.extend_timeout(STEP_TIMEOUT_SECONDS)

    def _on_stop(self, signum: int) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._notifier.stopping()
        name = signal.Signals(signum).name
        if self._job is not None:
            log.info("%s: stopping once the job in progress has finished", name)
        else:
            log.info("%s: stopping", name)

    # -- timers ----------------------------------------------------------------------------

    def _fire_timers(self, now: float) -> None:
        if self._settle_in_at is not None and now >= self._settle_in_at:
            self._settle_in()
        if self._watchdog_interval is not None and now >= self._watchdog_at:
            self._watchdog_at = now + self._watchdog_interval / 2
            self._ping_watchdog(now)
        if self._file_due is not None and now >= self._file_due:
            self._file_due = None
            if file_digest(self._options.config_file) != self._seen_digest:
                log.info("%s changed", self._options.config_file)
                # A SIGHUP already pending covers the file too.
                self._reload_wanted = self._reload_wanted or Trigger.FILE

    def _ping_watchdog(self, now: float) -> None:
        assert self._watchdog_interval is not None
        started = self._gpus.oldest_call_started()
        if started is not None and now - started > self._watchdog_interval / 2:
            if self._wedged_since != started:
                self._wedged_since = started
                log.error(
                    "an NVML call has been running for %.1f s: withholding watchdog pings "
                    "so that systemd restarts migd if it stays stuck",
                    now - started,
                )
            return
        self._notifier.watchdog()

    # -- deciding what to do next ---------------------------------------------------------

    def _start_due_work(self, now: float) -> None:
        if self._job is not None or self._stopping or self._exit_code is not None:
            return
        if self._reload_wanted is not None:
            trigger, self._reload_wanted = self._reload_wanted, None
            self._reload(trigger)
        elif self._loaded is None:
            return  # nothing valid to act on until a config is accepted
        elif self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            log.info("retrying %s", self._loaded.name)
            self._start(ReconcileJob(Trigger.RETRY, self._loaded))
        elif self._check_wanted or (self._drift_at is not None and now >= self._drift_at):
            self._drift_at = None
            self._check_wanted = False
            self._start(DriftJob(self._loaded))

    def _reload(self, trigger: Trigger) -> None:
        """Take a reload up: RELOADING=1, read the file, refuse it or apply it."""
        tokens = self._runtime.reload_requests()
        self._generation += 1
        self._notifier.reloading()
        path = self._options.config_file
        log.info("reloading %s (%s)", path, trigger.value)
        # A reload or an edit is the operator's word on who owns which GPU: migd
        # repairs contested GPUs again, with a fresh count.
        for index in sorted(self._contested):
            log.info("GPU %d: no longer contested (%s); repairing it again", index, trigger.value)
        self._contested = {}
        self._repairs = {}
        # The digest is taken before reading, so a write racing the read is seen again.
        self._seen_digest = file_digest(path)
        try:
            loaded: Loaded | ConfigError = load_selected(
                path, self._options.config_name, self._options.environ
            )
        except ConfigError as exc:
            loaded = exc
        self._take_up(trigger, loaded, tokens)

    def _take_up(
        self, trigger: Trigger, loaded: Loaded | ConfigError, tokens: tuple[str, ...]
    ) -> None:
        if isinstance(loaded, ConfigError):
            self._refuse(trigger, loaded, tokens)
            return
        # A reload reconciles anyway (a pending retry would only repeat it), and is a
        # fresh start for the backoff.
        self._retry_at = None
        self._retry_delay = None
        reload = trigger is not Trigger.STARTUP
        self._start(ReconcileJob(trigger, loaded, reload=reload, tokens=tokens))

    def _start(self, job: Job) -> None:
        """Run ``job`` in the worker thread; never once stopping.

        Every job starts here (startup, reloads, file edits, retries, drift checks and
        the repairs they find), so this is where a stop keeps anything new from
        beginning: after STOPPING=1 only the job already running may touch a GPU, and
        it finishes or rolls back. The next start of migd picks up from the node as it
        finds it.
        """
        if self._stopping:
            log.info("stopping: %s is not started", job.describe())
            return
        self._job = job
        self._progress = ""
        loaded = job.loaded
        reset = self._options.reset_command
        options = ReconcileOptions(
            reset_command=reset(loaded.config) if reset else loaded.settings.reset_command,
            progress=lambda line: self.post(Progress(line)),
        )
        leave_alone = frozenset(self._contested)
        thread = threading.Thread(
            target=self._work, args=(job, options, leave_alone), name="migd-worker", daemon=True
        )
        thread.start()

    def _work(self, job: Job, options: ReconcileOptions, leave_alone: frozenset[int]) -> None:
        """The worker thread: run one job, report back. Never touches the loop's state."""
        try:
            if isinstance(job, ReconcileJob):
                # Only the startup reconcile runs before READY=1: every later change
                # happens under running consumers, which must be refreshed after it.
                post_boot = job.trigger is not Trigger.STARTUP
                value: ReconcileResult | DriftReport | CheckSkipped = self._gpus.reconcile(
                    job.loaded, options, post_boot=post_boot, leave_alone=leave_alone
                )
            else:
                value = self._gpus.check(job.loaded)
        except Exception as exc:
            self.post(JobDone(job, None, exc))
        else:
            self.post(JobDone(job, value, None))

    # -- outcomes --------------------------------------------------------------------------

    def _job_done(self, done: JobDone) -> None:
        job = done.job
        self._job = None
        self._progress = ""
        if isinstance(job, DriftJob):
            self._drift_checked(job, done)
        else:
            self._reconciled(job, done)
        interval = self._settings.drift_check.interval
        self._drift_at = time.monotonic() + interval if interval > 0 else None

    def _reconciled(self, job: ReconcileJob, done: JobDone) -> None:
        error = done.error
        if isinstance(error, (ConfigError, InvalidRequest)) and (
            job.reload or job.trigger is Trigger.STARTUP
        ):
            # The config is valid YAML but cannot be applied to this node (a profile
            # this GPU lacks, a layout that does not fit): refused like an invalid file.
            self._refuse(job.trigger, error, job.tokens)
            return
        self._loaded = job.loaded
        if job.reload or job.trigger is Trigger.STARTUP:
            self._accepted()
        if error is not None:
            self._failed(job, error)
        else:
            assert isinstance(done.value, ReconcileResult)
            self._succeeded(job, done.value)
        self._publish()
        answer = self._answer()
        self._runtime.answer(job.tokens, answer)
        self._finish_reload(job.trigger, ok=answer.ok, exit_code=answer.exit_code)

    def _accepted(self) -> None:
        if self._refusal:
            log.info("%s accepted", self._options.config_file)
        self._refusal = ""
        self._reload_success_time = time.time()
        self._observers.reload_attempted(True)

    def _failed(self, job: ReconcileJob, error: BaseException) -> None:
        if isinstance(error, MigdError):
            self._failure = str(error)
            log.error("reconciling %s failed: %s", job.loaded.name, error)
        else:
            self._failure = f"internal error: {error!r}"
            log.error("reconciling %s failed", job.loaded.name, exc_info=error)
        self._last_reconcile_time = time.time()
        reason = error.name if isinstance(error, NvmlError) else "error"
        self._observers.reconcile_failed(job.trigger, reason)
        if not isinstance(error, (ConfigError, InvalidRequest)):
            self._schedule_retry()

    def _succeeded(self, job: ReconcileJob, result: ReconcileResult) -> None:
        self._result = result
        self._result_config = (job.loaded.name, job.loaded.config.digest)
        self._snapshot = result.snapshot
        self._desired = result.desired
        self._drift = ()
        self._failure = self._check_failure = ""
        self._last_reconcile_time = time.time()
        # What changed or went wrong, GPU by GPU; GPUs left as they were say nothing.
        for gpu, line in zip(result.gpus, format_result(result), strict=True):
            if gpu.outcome is GpuOutcome.APPLIED:
                log.info("%s", line)
            elif gpu.outcome not in IN_SYNC:
                log.error("%s", line)
        self._observers.reconciled(job.trigger, result)
        if result.worst() in IN_SYNC:
            self._last_success_time = self._last_reconcile_time
            self._retry_delay = None
        elif any(g.outcome in RETRIED for g in result.gpus):
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._stopping:
            return  # nothing is tried again once stopping (the next start does)
        retry = self._settings.retry
        delay = self._retry_delay or retry.initial
        self._retry_at = time.monotonic() + delay
        self._retry_in = delay
        self._retry_delay = min(delay * 2, retry.max)
        log.info("retrying in %g s", delay)

    def _refuse(
        self, trigger: Trigger, error: ConfigError | InvalidRequest, tokens: tuple[str, ...]
    ) -> None:
        """Keep the last good config (or, at startup, touch nothing) and say why."""
        self._refusal = str(error)
        keeping = f"; keeping {self._loaded.name}" if self._loaded else "; no GPU touched"
        log.error("%s refused%s:", self._options.config_file, keeping)
        for line in self._refusal.splitlines():
            log.error("  %s", line)
        self._observers.reload_attempted(False)
        self._publish()
        self._runtime.answer(tokens, ReloadAnswer(EXIT_INVALID, self._refusal))
        self._finish_reload(trigger, ok=False, exit_code=EXIT_INVALID)

    def _finish_reload(self, trigger: Trigger, *, ok: bool, exit_code: int) -> None:
        """READY=1 after the first outcome or a reload; or exit under boot-policy strict."""
        if self._stopping:
            return
        if self._ready_sent:
            if trigger in (Trigger.RELOAD, Trigger.FILE):
                self._notifier.ready()
            return
        if not ok and self._boot_policy == "strict":
            log.error(
                "boot-policy strict: exiting (status %d) instead of reporting ready", exit_code
            )
            self._exit_code = exit_code or EXIT_FAILED
            return
        self._ready_sent = True
        self._notifier.ready()
        self._settle_in()

    def _settle_in(self) -> None:
        """Start what can wait until READY=1: a node already right gets there sooner.

        The config watcher, then ``after_start`` (the metrics endpoint, whose socket
        is bound already), once, right after the first READY=1, or SETTLE_IN_SECONDS
        after the start while the first reconcile is still at work.
        """
        if self._settle_in_at is None:
            return
        self._settle_in_at = None
        if self._stopping:
            return  # nothing new once stopping
        self._watcher = ConfigWatcher(self._options.config_file, lambda: self.post(ConfigTouched()))
        self._watcher.start()
        # Anything that changed between reading the config and watching it is seen.
        self.post(ConfigTouched())
        for start in self._after_start:
            try:
                start()
            except Exception:
                log.exception("starting %s failed", getattr(start, "__name__", start))

    def _drift_checked(self, job: DriftJob, done: JobDone) -> None:
        if done.error is not None:
            self._check_failure = f"drift check failed: {done.error}"
            log.error("%s", self._check_failure)
            return
        self._check_failure = ""
        report = done.value
        if isinstance(report, CheckSkipped):
            log.info("drift check skipped: %s holds the node lock", report.holder)
            return
        assert isinstance(report, DriftReport)
        previous = {g.index: g for g in self._snapshot.gpus} if self._snapshot else {}
        now = {g.index: g for g in report.snapshot.gpus}
        drifted = []
        changed = []  # the GPUs changed behind migd's back since it last looked
        for drift in report.drifted:
            before, after = previous.get(drift.index), now.get(drift.index)
            changes = gpu_changes(before, after) if before and after else ()
            drift = Drift(drift.index, drift.text, drift.repairable, changes)
            drifted.append(drift)
            # A GPU found as it was at the last look (left blocked, say, or contested
            # and untouched since) is no new event.
            if changes or before is None:
                log.warning("drift: GPU %d %s", drift.index, drift.describe())
                self._observers.drifted(drift.index)
                changed.append(drift)
        self._snapshot = report.snapshot
        self._desired = report.desired
        self._drift = tuple(drifted)
        if self._settings.drift_check.policy != "repair":
            return
        newly_contested = self._count_repairs(d.index for d in changed if d.repairable)
        repair = any(d.repairable and d.index not in self._contested for d in drifted)
        if repair or newly_contested:
            # Also when only a GPU became contested: the reconcile leaves it alone and
            # rewrites the node's labels to say so.
            self._start(ReconcileJob(Trigger.DRIFT, job.loaded))

    def _count_repairs(self, indexes: Iterable[int]) -> bool:
        """Count a repair for each drifted GPU, or mark it contested; True when one became so.

        A GPU that drifts again after ``max-repairs`` repairs within ``window`` is
        being changed by something else: repairing it further would only flip-flop it.
        """
        check = self._settings.drift_check
        now = time.monotonic()
        newly = False
        for index in indexes:
            if index in self._contested:
                continue
            recent = tuple(t for t in self._repairs.get(index, ()) if now - t < check.window)
            if check.max_repairs and len(recent) >= check.max_repairs:
                self._contested[index] = (
                    f"drifted again after {len(recent)} repairs within {check.window:g} s "
                    "(another MIG controller?); migd no longer repairs it, until a reload "
                    "or a config edit"
                )
                log.error("GPU %d contested: %s", index, self._contested[index])
                newly = True
                recent = ()
            else:
                recent += (now,)
            self._repairs[index] = recent
        return newly

    def _answer(self) -> ReloadAnswer:
        """How the reconcile just finished, for ``migd reload``."""
        name = self._loaded.name if self._loaded else None
        if self._failure:
            return ReloadAnswer(EXIT_FAILED, self._failure, name)
        code = self._result.exit_code if self._result is not None else EXIT_OK
        return ReloadAnswer(code, self._status(self._gpu_views())[1], name)

    # -- publishing ------------------------------------------------------------------------

    @property
    def _settings(self) -> Settings:
        return self._loaded.settings if self._loaded is not None else Settings()

    @property
    def _boot_policy(self) -> BootPolicy:
        if self._options.boot_policy is not None:
            return self._options.boot_policy
        if isinstance(self._startup, Loaded):
            return self._startup.settings.boot_policy
        return "continue"

    def _gpu_views(self) -> tuple[GpuView, ...]:
        if self._result is None:
            return ()
        drifted = {d.index: d.describe() for d in self._drift}
        loaded = self._loaded
        stale = loaded is not None and self._result_config != (loaded.name, loaded.config.digest)
        views = []
        for gpu in self._result.gpus:
            if gpu.index in self._contested:
                reason = self._contested[gpu.index]
                if drifted.get(gpu.index):
                    reason += f"; {drifted[gpu.index]}"
                views.append(GpuView(gpu.index, False, "contested", reason, contested=True))
                continue
            if stale:
                # Not reconciled against the config in force (its reconcile raised).
                views.append(GpuView(gpu.index, False, GpuOutcome.FAILED.value, self._failure))
                continue
            drift = drifted.get(gpu.index)
            views.append(
                GpuView(
                    index=gpu.index,
                    in_sync=gpu.outcome in IN_SYNC and drift is None,
                    outcome=gpu.outcome.value,
                    reason=f"drifted: {drift}" if drift else gpu.reason,
                    reboot_required=gpu.outcome is GpuOutcome.REBOOT_REQUIRED,
                )
            )
        return tuple(views)

    def _status(self, gpus: tuple[GpuView, ...]) -> tuple[Phase, str]:
        """The phase and the one-line status, derived from the loop's state."""
        if self._stopping:
            if self._job is not None:
                return Phase.STOPPING, f"stopping once this finishes: {self._progress or '…'}"
            return Phase.STOPPING, "stopping"
        if isinstance(self._job, ReconcileJob):
            name = self._job.loaded.name
            return Phase.APPLYING, self._progress or f"checking GPUs against {name}"
        if self._last_reconcile_time is None and not self._refusal:
            return Phase.STARTING, f"starting: reading {self._options.config_file}"
        problems = []
        if self._refusal:
            first, *more = self._refusal.splitlines()
            extra = f" (+{len(more)} more)" if more else ""
            if self._loaded is not None:
                problems.append(f"config refused, keeping {self._loaded.name}: {first}{extra}")
            else:
                problems.append(f"config invalid, no GPU touched: {first}{extra}")
        problems += [failure for failure in (self._failure, self._check_failure) if failure]
        # An unreadable GPU has no desired layout (nothing is known to resolve one
        # against), yet it is not in sync: it counts with the GPUs the config covers.
        unreadable = (
            {g.index for g in self._snapshot.gpus if not g.readable} if self._snapshot else set()
        )
        wanted = {d.index for d in self._desired} | unreadable | set(self._contested)
        covered = [v for v in gpus if v.index in wanted]
        for view in covered:
            if not view.in_sync and view.reason != self._failure:  # said once, above
                problems.append(f"GPU {view.index} {view.outcome.replace('_', ' ')}: {view.reason}")
        if self._loaded is None:
            return Phase.DEGRADED, "degraded: " + "; ".join(problems)
        in_sync = sum(v.in_sync for v in covered)
        summary = f"{self._loaded.name}, {in_sync}/{len(covered)} GPUs in sync"
        if not problems:
            return Phase.READY, f"ready: {summary}"
        retry = f"; retry in {self._retry_in:g} s" if self._retry_at is not None else ""
        return Phase.DEGRADED, f"degraded: {'; '.join(problems)} ({summary}{retry})"

    def _view(self) -> DaemonView:
        gpus = self._gpu_views()
        phase, line = self._status(gpus)
        loaded = self._loaded
        return DaemonView(
            pid=self._pid,
            phase=phase,
            status_line=line,
            config_file=self._options.config_file,
            selected_config=loaded.name if loaded else None,
            config_digest=loaded.config.digest if loaded else None,
            last_reload_ok=not self._refusal,
            last_reload_error=self._refusal,
            last_reload_success_time=self._reload_success_time,
            last_reconcile_time=self._last_reconcile_time,
            last_success_time=self._last_success_time,
            last_error=self._failure or self._check_failure or _gpu_error(gpus),
            reload_generation=self._generation,
            gpus=gpus,
            snapshot=self._snapshot,
            desired=self._desired,
            extra=strategy_extra(loaded.settings.device_plugin.strategy, self._snapshot)
            if loaded and self._snapshot
            else {},
        )

    def _publish(self) -> None:
        view = self._view()
        if view == self._published:
            return
        if self._published is None or view.phase is not self._published.phase:
            log.info("%s", view.status_line)
        self._published = view
        self._observers.published(view)


def _gpu_error(gpus: Sequence[GpuView]) -> str:
    """The first GPU that is not in sync, and why."""
    return next((f"GPU {g.index}: {g.reason}" for g in gpus if not g.in_sync), "")
