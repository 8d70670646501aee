"""Living with the node around a change: GPU client units, hooks, refreshes, NFD labels.

One function, :func:`around_change`, wraps every reconcile that may change a GPU
(``migd apply`` and the daemon both go through :func:`apply_with_services`). For a
change, in this order:

1. NFD label ``nvidia.com/mig.config.state=pending`` (when ``settings.nfd.path``);
2. hook ``apply-start``; ``pre-apply-mode`` when some GPU's MIG mode changes;
   ``pre-apply-config`` when some GPU's instances change (``migd.node.hooks``);
3. the GPU client units (``settings.gpu-clients``) that are running are stopped, in
   reverse order, when the change needs it: a mode change, or instances destroyed
   (creating instances next to running ones disturbs nobody);
4. the change itself, planned again from a fresh read of the node (hooks and stops
   may have ended processes), and carried out (``migd.gpu.executor``);
5. whatever happened: the units migd stopped are started again, in order;
6. after a post-boot change (the daemon is past its first READY, or ``migd apply``)
   that changed a GPU: the MIG capability device nodes (``mig-caps-command``), the
   CDI spec (``cdi-refresh-command``), then a ``try-restart`` of the device-plugin
   units, whose plugin never rediscovers devices by itself;
7. hook ``apply-exit`` with ``MIGD_EXIT_CODE``; then the final NFD labels.

A failing ``apply-start``/``pre-apply-*`` hook, or a client unit that will not stop,
ends the apply before any GPU is touched (:class:`ChangeAborted`, exit 1). Failures
after the change (a unit that will not start, a refresh, ``apply-exit``) are
reported and logged but do not change its outcome. A reconcile with nothing to do
(every GPU right, or only blocked ones: migd never destroys work unless forced)
stops nothing, and in the daemon runs no hook (it checks the GPUs every minute);
``migd apply`` and ``migd restore`` run ``apply-start`` and ``apply-exit`` all the
same, as mig-parted does on every apply.

systemd is driven through ``systemctl`` as an argv (:class:`Systemctl`, injectable),
each call with a timeout. The GPU Operator's gpu-clients file naming more client units
is read by ``migd.formats.clients_file``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from migd.command import CommandResult, run_command
from migd.core.layout import NodeSnapshot
from migd.core.plan import NodePlan
from migd.core.planner import plan_node
from migd.core.selection import desired_layouts
from migd.errors import EXIT_FAILED, MigdError
from migd.formats.clients_file import load_clients_file
from migd.formats.hooks_file import (
    APPLY_EXIT,
    APPLY_START,
    NO_HOOKS,
    PRE_APPLY_CONFIG,
    PRE_APPLY_MODE,
    HooksFile,
    load_hooks,
)
from migd.gpu.executor import ReconcileOptions, ReconcileResult, execute
from migd.node.hooks import HookContext, HookRun, run_stage
from migd.node.nfd import NodeLabels, State, state_of, write_labels
from migd.node.strategy import Strategy, StrategyCheck, check_strategy

if TYPE_CHECKING:
    from migd.core.config import Config, Settings
    from migd.gpu.nvml import NvmlAdapter

log = logging.getLogger("migd.node.change")

# ``systemctl is-active`` states of a unit that is up or coming up, and so may hold a
# GPU. A unit already "deactivating" is on its way down by someone else's hand: migd
# neither stops it nor starts it again.
RUNNING_STATES = frozenset({"active", "reloading", "activating", "refreshing"})


# ---------------------------------------------------------------------------
# systemctl
# ---------------------------------------------------------------------------


class ClientsError(MigdError):
    """systemctl could not say which GPU client units are running."""


@dataclass(frozen=True)
class Systemctl:
    """``systemctl`` as an argv (tests put a fake first), each call bounded by ``timeout``."""

    argv: tuple[str, ...] = ("systemctl",)
    timeout: float = 120.0

    def run(self, *args: str) -> CommandResult:
        return run_command((*self.argv, *args), timeout=self.timeout)

    def running(self, units: Sequence[str]) -> tuple[str, ...]:
        """Those of ``units`` that are up or coming up, in the given order.

        One ``is-active`` call for all: it prints one state per unit, in order (its
        exit status only says whether all are active, so the output is read).
        """
        if not units:
            return ()
        result = self.run("is-active", "--", *units)
        states = result.stdout.split()
        if len(states) != len(units):
            why = result.error or f"printed {len(states)} states for {len(units)} units"
            raise ClientsError(f"cannot tell which GPU client units run: systemctl {why}")
        pairs = zip(units, states, strict=True)
        return tuple(unit for unit, state in pairs if state in RUNNING_STATES)

    def stop(self, unit: str) -> CommandResult:
        # Blocking on purpose: the unit must be gone before its GPU is touched. A stop
        # job never waits for migd's own start job, even for a unit ordered
        # After=migd.service: systemd orders a stop before a start whatever the
        # direction of After=/Before= (systemd.unit(5)), so this cannot deadlock.
        return self.run("stop", "--", unit)

    def start(self, unit: str) -> CommandResult:
        # --no-block: only queue the start job. A unit ordered After=migd.service
        # (kubelet, slurmd, dcgm) would wait for migd's start job to finish, while
        # migd, inside that start job, waited for it: a deadlock until the timeout.
        return self.run("start", "--no-block", "--", unit)

    def try_restart(self, unit: str) -> CommandResult:
        # --no-block for the same reason as start(); try-restart leaves a stopped
        # unit stopped (a device plugin that is not running is not started).
        return self.run("try-restart", "--no-block", "--", unit)


# ---------------------------------------------------------------------------
# What a change is, before it is made (pure)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What a reconcile is about to do, read from its plan.

    ``gpus`` are the GPUs it will touch: MIG-capable, not blocked, not already right.
    """

    before: NodeSnapshot
    gpus: tuple[int, ...] = ()
    mode: bool = False  # some GPU's MIG mode changes (or a pending change is activated)
    instances: bool = False  # some GPU's instances are destroyed or created
    destroys: bool = False  # some GPU instance or compute instance is destroyed

    @property
    def any(self) -> bool:
        return bool(self.gpus)

    @property
    def stops_clients(self) -> bool:
        """A mode change or a destroy disturbs the GPU's users; creates alone do not."""
        return self.mode or self.destroys

    @classmethod
    def of(cls, plan: NodePlan) -> Change:
        """The change ``plan`` makes: the GPUs it changes, and how."""
        changes = plan.changes
        destroys = any(p.destroy_gis or p.destroy_cis for p in changes)
        return cls(
            before=plan.snapshot,
            gpus=tuple(p.index for p in changes),
            mode=any(p.set_mode is not None or p.activate_mode for p in changes),
            instances=destroys or any(p.create_gis or p.create_cis for p in changes),
            destroys=destroys,
        )


# ---------------------------------------------------------------------------
# What migd does around a change
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One thing migd did to the node besides the GPUs (a unit stopped, a refresh…)."""

    what: str  # "stop dcgm.service", "cdi-refresh-command", "try-restart nvidia-device-plugin"
    ok: bool
    detail: str = ""  # why it failed; empty when it went well

    def describe(self) -> str:
        return self.what if self.ok else f"{self.what}: {self.detail}"


def _step(what: str, result: CommandResult) -> Step:
    return Step(what, result.ok, result.error or "")


@dataclass(frozen=True)
class NodeServices:
    """The node's services migd keeps consistent with the GPUs (``settings:``).

    Built once per loaded config by :meth:`from_settings`, which reads the hooks and
    gpu-clients files, so a bad file is refused with the config, before any change.
    """

    hooks: HooksFile = NO_HOOKS
    clients: tuple[str, ...] = ()  # GPU client units, in start order
    device_plugin_units: tuple[str, ...] = ()
    cdi_refresh_command: tuple[str, ...] | None = None
    mig_caps_command: tuple[str, ...] | None = None
    nfd_path: str | None = None
    strategy: Strategy = "mixed"
    timeout: float = 120.0  # per hook and per command
    systemctl: Systemctl = field(default_factory=Systemctl)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        hooks_file: str | None = None,
        systemctl: tuple[str, ...] = ("systemctl",),
        euid: int | None = None,
    ) -> NodeServices:
        """Read the hooks file (``hooks_file`` overrides ``settings.hooks-file``) and the
        gpu-clients file; ConfigError when either is invalid or untrusted."""
        hooks_path = hooks_file or settings.hooks_file
        hooks = load_hooks(hooks_path, euid=euid) if hooks_path else NO_HOOKS
        units = list(settings.gpu_clients.units)
        if settings.gpu_clients.file:
            units += load_clients_file(settings.gpu_clients.file, euid=euid)
        return cls(
            hooks=hooks,
            clients=tuple(dict.fromkeys(units)),  # duplicates dropped, first place kept
            device_plugin_units=settings.device_plugin.units,
            cdi_refresh_command=settings.cdi_refresh_command,
            mig_caps_command=settings.mig_caps_command,
            nfd_path=settings.nfd.path,
            strategy=settings.device_plugin.strategy,
            timeout=settings.command_timeout,
            systemctl=Systemctl(systemctl, settings.command_timeout),
        )


@dataclass(frozen=True)
class ChangeReport:
    """Everything that happened around one reconcile, for logs, status and metrics.

    ``problems`` are the failures that did not change the outcome (a unit that would
    not start again, a refresh, an ``apply-exit`` hook, the NFD file), one line each;
    each was logged where it happened.
    """

    result: ReconcileResult | None  # None only in the report of a ChangeAborted
    change: Change
    hooks: tuple[HookRun, ...] = ()
    stopped: tuple[str, ...] = ()  # client units migd stopped, in stop order
    started: tuple[str, ...] = ()  # those migd started again, in start order
    refresh: tuple[Step, ...] = ()  # post-change refreshes, in order
    strategy: StrategyCheck | None = None
    problems: tuple[str, ...] = ()
    aborted: str | None = None  # why no GPU was touched

    def lines(self) -> list[str]:
        """What migd did around the change, one line per kind of action (none if none)."""
        out = []
        if self.hooks:
            runs = (run.describe().removeprefix("hook ") for run in self.hooks)
            out.append("hooks: " + "; ".join(runs))
        if self.stopped:
            out.append("stopped GPU client units: " + ", ".join(self.stopped))
        if self.started:
            out.append("started GPU client units again: " + ", ".join(self.started))
        if self.refresh:
            out.append("after the change: " + "; ".join(s.describe() for s in self.refresh))
        if self.strategy is not None and not self.strategy.compatible:
            out.append(self.strategy.summary())
        return out


class ChangeAborted(MigdError):
    """A hook or a GPU client unit stopped the apply before any GPU was touched."""

    exit_code = EXIT_FAILED

    def __init__(self, reason: str, report: ChangeReport) -> None:
        super().__init__(f"{reason}; no GPU was changed")
        self.reason = reason
        self.report = report


def _stop_clients(
    services: NodeServices, say: Callable[[str], None]
) -> tuple[tuple[str, ...], str | None]:
    """Stop the running client units in reverse order.

    Returns the units migd stopped (in stop order) and, when one would not stop, why:
    that unit is counted as stopped, so it is started again with the others.
    """
    try:
        running = services.systemctl.running(services.clients)
    except ClientsError as exc:
        return (), str(exc)
    skipped = [u for u in services.clients if u not in running]
    if skipped:
        log.info("GPU client units not running, left alone: %s", ", ".join(skipped))
    stopped: list[str] = []
    for unit in reversed(running):
        say(f"stopping GPU client unit {unit}")
        result = services.systemctl.stop(unit)
        stopped.append(unit)
        if not result.ok:
            return tuple(stopped), f"cannot stop GPU client unit {unit}: {result.error}"
    return tuple(stopped), None


def _start_clients(
    services: NodeServices, stopped: Sequence[str], say: Callable[[str], None]
) -> tuple[tuple[str, ...], list[str]]:
    """Start again, in order, exactly the units migd stopped; returns them and failures."""
    started: list[str] = []
    problems: list[str] = []
    for unit in reversed(stopped):
        say(f"starting GPU client unit {unit} again")
        result = services.systemctl.start(unit)
        if result.ok:
            started.append(unit)
        else:
            problems.append(f"cannot start GPU client unit {unit} again: {result.error}")
            log.error("%s", problems[-1])
    return tuple(started), problems


def refresh_after_change(services: NodeServices, say: Callable[[str], None]) -> tuple[Step, ...]:
    """Make the node's consumers see the new MIG devices; each step optional and reported.

    First the capability device nodes (``/dev/nvidia-caps/nvidia-cap*``) must exist, then
    the CDI spec is regenerated from them, then the device plugin is restarted to read it.
    """
    steps: list[Step] = []
    commands = (
        ("mig-caps-command", services.mig_caps_command),
        ("cdi-refresh-command", services.cdi_refresh_command),
    )
    for name, argv in commands:
        if argv:
            say(f"running the {name}: {' '.join(argv)}")
            steps.append(_step(name, run_command(argv, timeout=services.timeout)))
    for unit in services.device_plugin_units:
        say(f"restarting device-plugin unit {unit}")
        steps.append(_step(f"try-restart {unit}", services.systemctl.try_restart(unit)))
    for step in steps:
        if step.ok:
            log.info("after the change: %s: done", step.what)
        else:
            log.error("after the change: %s", step.describe())
    return tuple(steps)


def _touched(result: ReconcileResult) -> bool:
    """True when some GPU was mutated: applied, or failed and rolled back (new UUIDs)."""
    return any(g.mutations > 0 for g in result.gpus)


def _label(
    services: NodeServices,
    name: str,
    state: State,
    in_sync: bool,
    strategy: StrategyCheck | None,
    contested: frozenset[int] = frozenset(),
) -> str | None:
    if services.nfd_path is None:
        return None
    compatible = None if strategy is None else strategy.compatible
    if contested and state == "success":
        # A contested GPU is left alone, so the reconcile "succeeded" without it.
        state, in_sync = "failed", False
    labels = NodeLabels(name, state, in_sync, compatible, tuple(sorted(contested)))
    return write_labels(services.nfd_path, labels)


def _strategy(services: NodeServices, snapshot: NodeSnapshot) -> StrategyCheck:
    check = check_strategy(services.strategy, snapshot)
    if check.compatible:
        log.debug("%s", check.summary())
    else:
        log.warning("%s", check.summary())
    return check


def around_change(
    services: NodeServices,
    change: Change,
    act: Callable[[], ReconcileResult],
    *,
    context: HookContext,
    post_boot: bool,
    say: Callable[[str], None] | None = None,
    hooks_when_idle: bool = False,
    contested: frozenset[int] = frozenset(),
) -> ChangeReport:
    """Run ``act`` (the reconcile) inside the node's services, as the module doc says.

    ``post_boot``: the daemon has sent its first READY (or this is ``migd apply``), so
    consumers already run and must be refreshed after a change. ``say`` hears progress
    lines (the executor's progress callback). ``hooks_when_idle``: ``apply-start`` and
    ``apply-exit`` run even when nothing changes, as mig-parted runs them on every
    apply (its shipped hooks persist the selected config and start services there).
    Raises ChangeAborted when a hook or a unit stopped the change before any GPU was
    touched; whatever ``act`` raises is raised again after the units were started and
    ``apply-exit`` ran.
    """
    tell = say or (lambda line: None)
    name = context.selected_config
    if not change.any and not hooks_when_idle:
        result = act()
        strategy = _strategy(services, result.snapshot)
        problem = _label(
            services, name, state_of(result), result.exit_code == 0, strategy, contested
        )
        return ChangeReport(
            result, change, strategy=strategy, problems=(problem,) if problem else ()
        )

    problems: list[str] = []
    hooks: list[HookRun] = []
    stopped: tuple[str, ...] = ()
    started: tuple[str, ...] = ()
    refresh: tuple[Step, ...] = ()
    result: ReconcileResult | None = None
    aborted: str | None = None

    def stage(which: str, exit_code: int | None = None) -> str | None:
        ran = run_stage(
            services.hooks, which, context, timeout=services.timeout, exit_code=exit_code, say=say
        )
        hooks.extend(ran.runs)
        return "; ".join(ran.errors) or None

    problem = _label(services, name, "pending", False, None)
    if problem:
        problems.append(problem)
    try:
        aborted = stage(APPLY_START)
        if aborted is None and change.mode:
            aborted = stage(PRE_APPLY_MODE)
        if aborted is None and change.instances:
            aborted = stage(PRE_APPLY_CONFIG)
        if aborted is None and change.stops_clients and services.clients:
            stopped, aborted = _stop_clients(services, tell)
        if aborted is None:
            result = act()
    finally:
        # Whatever happened, even an exception from act(): the node goes back in service.
        started, failures = _start_clients(services, stopped, tell)
        problems += failures
        if result is not None and post_boot and _touched(result):
            refresh = refresh_after_change(services, tell)
            problems += [s.describe() for s in refresh if not s.ok]
        exit_error = stage(APPLY_EXIT, EXIT_FAILED if result is None else result.exit_code)
        if exit_error:
            problems.append(exit_error)
        snapshot = change.before if result is None else result.snapshot
        strategy = _strategy(services, snapshot)
        in_sync = result is not None and result.exit_code == 0
        state: State = "failed" if result is None else state_of(result)
        problem = _label(services, name, state, in_sync, strategy, contested)
        if problem:
            problems.append(problem)
    report = ChangeReport(
        result=result,
        change=change,
        hooks=tuple(hooks),
        stopped=stopped,
        started=started,
        refresh=refresh,
        strategy=strategy,
        problems=tuple(problems),
        aborted=aborted,
    )
    if aborted is not None:
        raise ChangeAborted(aborted, report)
    return report


def apply_with_services(
    adapter: NvmlAdapter,
    config: Config,
    name: str,
    options: ReconcileOptions,
    services: NodeServices,
    *,
    post_boot: bool,
    reset_timeout: float | None = None,
    hooks_when_idle: bool = False,
    leave_alone: frozenset[int] = frozenset(),
) -> ChangeReport:
    """Read the node, plan config ``name`` on it, and carry the plan out inside the services.

    The entry point of ``migd apply`` and of the daemon. The plan says which hooks run
    and which units stop. GPUs in ``leave_alone`` (those the daemon found contested by
    another controller) are planned as if the config did not cover them. InvalidRequest
    (a layout that cannot be planned) is raised before any hook runs; ChangeAborted as
    in :func:`around_change`; ``hooks_when_idle`` as there.
    """
    entries = config.entries(name)

    def plan_for(snapshot: NodeSnapshot) -> NodePlan:
        desired = desired_layouts(snapshot, entries)
        desired = tuple(d for d in desired if d.index not in leave_alone)
        return plan_node(snapshot, desired, force=options.force, mode_only=options.mode_only)

    return reconcile_with_services(
        adapter,
        plan_for,
        options,
        services,
        name=name,
        source=config.source,
        post_boot=post_boot,
        reset_timeout=config.settings.reset_timeout if reset_timeout is None else reset_timeout,
        hooks_when_idle=hooks_when_idle,
        contested=leave_alone,
    )


def reconcile_with_services(
    adapter: NvmlAdapter,
    plan_for: Callable[[NodeSnapshot], NodePlan],
    options: ReconcileOptions,
    services: NodeServices,
    *,
    name: str,
    source: str,
    post_boot: bool,
    reset_timeout: float,
    hooks_when_idle: bool = False,
    contested: frozenset[int] = frozenset(),
) -> ChangeReport:
    """Read the node, plan with ``plan_for``, and carry the plan out inside the services.

    What :func:`apply_with_services` does for a config, for any goal: ``migd restore``
    plans towards a checkpoint. ``name`` and ``source`` are what the hooks are told
    (``MIG_PARTED_SELECTED_CONFIG``, ``MIG_PARTED_CONFIG_FILE``).
    """
    plan = plan_for(adapter.snapshot())
    change = Change.of(plan)

    def act() -> ReconcileResult:
        # Hooks and stopped units may have ended processes: plan again from a fresh read.
        return execute(
            adapter,
            plan_for(adapter.snapshot()) if change.any else plan,
            options,
            config_name=name,
            reset_timeout=reset_timeout,
        )

    context = HookContext(
        selected_config=name,
        config_file=source,
        hooks_file=services.hooks.source or "",
        skip_reset=options.skip_reset,
        mode_only=options.mode_only,
    )
    return around_change(
        services,
        change,
        act,
        context=context,
        post_boot=post_boot,
        say=options.progress,
        hooks_when_idle=hooks_when_idle,
        contested=contested,
    )
