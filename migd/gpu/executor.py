"""Carries out a Plan through the NVML adapter: checkpoint, act, verify, roll back.

The imperative shell around the planner (``migd.core.planner``): it decides nothing
the plan has not. Per GPU the plan changes, in this order: destroy what the plan drops
(compute instances, then their GPU instance), change the MIG mode when it differs,
create the new GPU instances at their explicit placements and their compute instances
at theirs, then re-read the GPU and verify it against the plan's target.

GPUs run in parallel, one thread each (NVML is thread-safe), in three phases so that
mode changes that stay pending are activated by one reset of exactly those GPUs:
destroys and mode changes on every GPU; the reset; creates and verification.

Before a GPU is touched its geometry is captured (``migd.core.checkpoint``). When a
step fails, that GPU alone is put back, by a plan towards that capture, with explicit
placements, and reported FAILED with the NVML error name; other GPUs keep their
result. A GPU the plan found blocked (an instance to destroy runs a process) is
reported BLOCKED and not touched. A mode change that cannot be activated (the reset
command fails, or the driver answers RESET_REQUIRED as under VM passthrough) is
reported REBOOT_REQUIRED, once: nothing loops.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from migd.command import run_command
from migd.core.checkpoint import Checkpoint, capture_gpu, gpu_matches
from migd.core.compare import layout_matches, mode_matches
from migd.core.config import DEFAULT_RESET_COMMAND, DEFAULT_RESET_TIMEOUT
from migd.core.layout import DesiredGpu, GiProfile, GiSpec, GpuState, NodeSnapshot
from migd.core.names import describe, describe_current, format_counts, layout_counts, profile_label
from migd.core.placement import place_cis
from migd.core.plan import Action, CiCreate, GiCreate, GpuPlan, NodePlan
from migd.core.planner import plan_node
from migd.errors import EXIT_BLOCKED, EXIT_FAILED, EXIT_OK, EXIT_REBOOT_REQUIRED, NvmlError

if TYPE_CHECKING:
    from migd.gpu.nvml import NvmlAdapter


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
    def exit_code(self) -> int:
        return _EXIT[self.worst()]


@dataclass(frozen=True)
class ReconcileOptions:
    """How to reconcile: ``force`` and ``mode_only`` shape the plan (``plan_node``), the
    rest how the executor carries it out."""

    force: bool = False  # destroy busy instances (the only way to)
    mode_only: bool = False  # -m: set MIG mode, leave instances alone
    skip_reset: bool = False  # -s: never reset a GPU to activate a pending mode change
    parallel: bool = True  # GPUs in parallel (NVML is thread-safe)
    # argv of the reset command; "{bus_ids}" expands to the bus ids of the GPUs to reset
    reset_command: tuple[str, ...] = DEFAULT_RESET_COMMAND
    progress: Callable[[str], None] | None = field(default=None, compare=False)


# ---------------------------------------------------------------------------
# CI profile ids: from the table planned with to the table the GI really offers
# ---------------------------------------------------------------------------


class _StepFailed(Exception):
    """A step failed for a reason that is not an NVML error (bounded ``error`` label)."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


def _real_ci_id(planned: GiProfile, real: GiProfile, ci_id: int) -> int:
    """The id in ``real`` of the CI profile that ``ci_id`` names in ``planned``.

    Matched by name; the CI spanning the whole GI maps to the real full CI (on
    Hopper's double-memory 1g GI a plain 1c carries the same name).
    """
    ci = planned.ci_profile(ci_id)
    if ci is None:
        raise _StepFailed("NO_CI_PROFILE", f"{planned.name} offers no CI profile id {ci_id}")
    if ci.name == planned.name:
        full = real.full_ci()
        if full is not None:
            return full.id
    named = [c for c in real.ci_profiles if c.name == ci.name]
    pick = next((c for c in named if c.id == ci_id), named[0] if named else None)
    if pick is None:
        raise _StepFailed(
            "NO_CI_PROFILE", f"the GPU offers no {ci.name} compute instance in {real.name}"
        )
    return pick.id


def _translate_desired(desired: DesiredGpu, before: GpuState, after: GpuState) -> DesiredGpu:
    """``desired`` with CI ids taken from the tables ``after`` reports, where they differ."""
    specs = []
    for spec in desired.instances:
        planned = before.profile_by_id(spec.profile_id)
        real = after.profile_by_id(spec.profile_id)
        if planned is None or real is None or planned.ci_profiles == real.ci_profiles:
            specs.append(spec)
            continue
        ids = tuple(sorted(_real_ci_id(planned, real, ci) for ci in spec.ci_profile_ids))
        specs.append(GiSpec(spec.profile_id, ids))
    return dataclasses.replace(desired, instances=tuple(sorted(specs)))


# ---------------------------------------------------------------------------
# Resetting GPUs
# ---------------------------------------------------------------------------


def run_reset_command(command: Sequence[str], bus_ids: Sequence[str], timeout: float) -> str | None:
    """Run the reset command for ``bus_ids``; None on success, else why not.

    It runs as every external program does (``migd.command``): no shell, its own
    process group killed at ``timeout`` (``settings.reset-timeout``), its output in
    files a child left running cannot block migd on. GPUs whose reset failed or was
    cut short count as not reset.
    """
    joined = ",".join(bus_ids)
    argv = [arg.replace("{bus_ids}", joined) for arg in command]
    result = run_command(argv, timeout=timeout)
    if result.ok:
        return None
    if result.returncode is None and not result.timed_out:
        return result.error  # it did not start; the error names the program
    return f"{argv[0]} {result.error}"


# ---------------------------------------------------------------------------
# One GPU's run
# ---------------------------------------------------------------------------


class _GpuRun:
    """Carries out one GPU's plan in phases; ``result`` is set once the GPU is decided.

    Each phase runs in one thread at a time, so the counters need no lock.
    """

    def __init__(
        self,
        adapter: NvmlAdapter,
        plan: GpuPlan,
        *,
        force: bool,
        options: ReconcileOptions,
        reset_timeout: float,
        say: Callable[[str], None],
        headline: str,
    ) -> None:
        assert plan.target is not None, "only a GPU with a target is changed"
        self.adapter = adapter
        self.plan = plan
        self.gpu = plan.gpu
        self.index = plan.index
        self.target = plan.target
        self.force = force
        self.options = options
        self.reset_timeout = reset_timeout
        self.say = say
        self.headline = headline
        self.checkpoint = capture_gpu(plan.gpu)  # taken before anything is touched
        self.mutations = 0
        self.reset = False
        self.needs_reset = False
        self.result: GpuResult | None = None

    # -- phases ------------------------------------------------------------------

    def destroy_and_set_mode(self) -> None:
        self.say(self.headline)
        try:
            self._destroy(self.plan)
            self._set_mode(self.plan)
        except (NvmlError, _StepFailed) as exc:
            self._fail(exc)

    def after_reset(self, problem: str | None) -> None:
        if self.result is not None:
            return
        if problem is not None:
            self._decide(
                GpuOutcome.REBOOT_REQUIRED,
                "RESET_FAILED",
                f"the MIG mode change is pending and the GPU could not be reset ({problem}); "
                "reboot the node to activate it",
            )
            return
        self.reset = True
        try:
            current, _ = self.adapter.mig_mode(self.index)
        except NvmlError as exc:
            self._fail(exc)
            return
        if current != self.target.mig_enabled:
            self._decide(
                GpuOutcome.REBOOT_REQUIRED,
                "PENDING_AFTER_RESET",
                "the MIG mode change is still pending after a GPU reset; reboot the node",
            )

    def create_and_verify(self) -> None:
        if self.result is not None:
            return
        try:
            self._create(self.plan)
            problem = self._verify(self.adapter.gpu(self.index))
            if problem is not None:
                raise _StepFailed("VERIFY", problem)
        except (NvmlError, _StepFailed) as exc:
            self._fail(exc)
            return
        self._decide(GpuOutcome.APPLIED, None, "")

    # -- steps -------------------------------------------------------------------

    def _mutate(self, fn: Callable[..., object], *args: object) -> object:
        self.mutations += 1
        return fn(*args)

    def _destroy(self, plan: GpuPlan) -> None:
        instances = {gi.id: gi for gi in plan.gpu.instances}
        for gi_id, ci_id in plan.destroy_cis:
            self._mutate(self.adapter.destroy_compute_instance, self.index, gi_id, ci_id)
        for gi_id in plan.destroy_gis:
            self._mutate(self.adapter.destroy_gpu_instance, self.index, gi_id)
            gi = instances.get(gi_id)
            where = f" ({profile_label(plan.gpu, gi.profile_id)} at {gi.placement})" if gi else ""
            self.say(f"GPU {self.index}: destroyed GI {gi_id}{where}")

    def _set_mode(self, plan: GpuPlan) -> None:
        status = ""
        request = plan.mode_request
        if request is not None:
            status = str(self._mutate(self.adapter.set_mig_mode, self.index, request))
            word = "on" if request else "off"
            self.say(f"GPU {self.index}: MIG mode {word} requested ({status})")
            if status == "RESET_REQUIRED":
                self._decide(
                    GpuOutcome.REBOOT_REQUIRED,
                    "RESET_REQUIRED",
                    f"the driver needs a reboot to turn MIG {word} "
                    "(the GPU cannot be reset here, as under VM passthrough)",
                )
                return
        elif not plan.activate_mode:
            return
        current, pending = self.adapter.mig_mode(self.index)
        if current == self.target.mig_enabled:
            return
        if pending != self.target.mig_enabled:
            raise _StepFailed(status or "MODE_NOT_SET", "the MIG mode change did not take")
        if self.options.skip_reset:
            self._decide(
                GpuOutcome.REBOOT_REQUIRED,
                "RESET_SKIPPED",
                "the MIG mode change is pending and resets are disabled (--skip-reset); "
                "reset the GPU or reboot the node to activate it",
            )
            return
        self.needs_reset = True

    def _create(self, plan: GpuPlan) -> None:
        for gi_id, ci in plan.create_cis:
            self._mutate(
                self.adapter.create_compute_instance, self.index, gi_id, ci.profile_id, ci.placement
            )
        for create in plan.create_gis:
            gi_id = int(
                self._mutate(
                    self.adapter.create_gpu_instance,
                    self.index,
                    create.profile_id,
                    create.placement,
                )
            )
            # Recorded geometry is created as recorded; a layout's CI ids come from the
            # table read before acting and are mapped onto the GI's real one.
            cis = create.cis if plan.exact is not None else self._real_cis(create, gi_id)
            for ci in cis:
                self._mutate(
                    self.adapter.create_compute_instance,
                    self.index,
                    gi_id,
                    ci.profile_id,
                    ci.placement,
                )
            spec = GiSpec(create.profile_id, tuple(sorted(c.profile_id for c in create.cis)))
            names = format_counts(layout_counts(self.gpu, [spec]))
            self.say(f"GPU {self.index}: created {names} at {create.placement}")

    def _real_cis(self, create: GiCreate, gi_id: int) -> tuple[CiCreate, ...]:
        """The planned CIs with the ids and placements the new GI really offers."""
        planned = self.gpu.profile_by_id(create.profile_id)
        if not create.cis or planned is None:
            return create.cis
        real_table = self.adapter.compute_instance_profiles(self.index, gi_id)
        if real_table == planned.ci_profiles:
            return create.cis
        real = dataclasses.replace(planned, ci_profiles=real_table)
        ids = [_real_ci_id(planned, real, ci.profile_id) for ci in create.cis]
        placed = place_cis(real, ids)
        if placed is None:
            raise _StepFailed(
                "NO_CI_PLACEMENT",
                f"the compute instances planned for {planned.name} do not fit the GI's real "
                "compute-instance placements",
            )
        return placed

    def _verify(self, after: GpuState) -> str | None:
        """Why the GPU does not hold what the plan promised, or None."""
        if self.plan.exact is not None:
            if gpu_matches(after, self.plan.exact):
                return None
            return "the GPU differs from the checkpoint"
        if self.plan.mode_only:
            if mode_matches(after, self.target.mig_enabled):
                return None
            return (
                f"MIG mode reads {after.mig_enabled} (pending {after.mig_pending}) after the change"
            )
        if layout_matches(after, _translate_desired(self.target, self.gpu, after)):
            return None
        return (
            f"the GPU holds {describe_current(after)} after the change, "
            f"not {describe(self.gpu, self.target)}"
        )

    # -- outcomes ----------------------------------------------------------------

    def _decide(self, outcome: GpuOutcome, error: str | None, reason: str) -> None:
        self.result = GpuResult(
            index=self.index,
            outcome=outcome,
            reason=reason,
            error=error,
            mutations=self.mutations,
            reset=self.reset,
        )
        if outcome is GpuOutcome.REBOOT_REQUIRED:
            self.say(f"GPU {self.index}: reboot required: {reason}")

    def _fail(self, exc: NvmlError | _StepFailed) -> None:
        error = exc.name if isinstance(exc, NvmlError) else exc.error
        self.say(f"GPU {self.index}: {exc}; putting it back as it was")
        note = self._roll_back()
        self._decide(GpuOutcome.FAILED, error, f"{exc}; {note}")
        self.say(f"GPU {self.index}: failed ({error}); {note}")

    def _roll_back(self) -> str:
        """Put the GPU back to its checkpoint; returns how that went, for the reason.

        Restoring is planning towards the checkpoint, from the GPU as it is now.
        """
        try:
            now = self.adapter.gpu(self.index)
            if gpu_matches(now, self.checkpoint):
                return "the GPU was left as it was"
            back = plan_node(
                NodeSnapshot((now,)), Checkpoint((self.checkpoint,)), force=self.force
            ).gpu(self.index)
            if back.action is Action.BLOCKED:
                pids = ", ".join(str(p) for b in back.blockers for p in b.pids)
                return f"not restored: instances to remove now run pid(s) {pids}"
            self._destroy(back)
            request = back.mode_request
            if request is not None:
                status = self._mutate(self.adapter.set_mig_mode, self.index, request)
                current, _ = self.adapter.mig_mode(self.index)
                if current != self.checkpoint.mig_enabled:
                    problem = (
                        "the driver needs a reboot"
                        if status == "RESET_REQUIRED"
                        else "resets are disabled (--skip-reset)"
                        if self.options.skip_reset
                        else run_reset_command(
                            self.options.reset_command, [self.gpu.bus_id], self.reset_timeout
                        )
                    )
                    if problem is not None:
                        return f"restored except the MIG mode, pending its change back ({problem})"
                    self.reset = True
            self._create(back)
            if gpu_matches(self.adapter.gpu(self.index), self.checkpoint):
                return "restored to its previous layout"
            return "restoring left it different from its previous layout"
        except (NvmlError, _StepFailed) as exc:
            return f"restoring it failed too: {exc}"


# ---------------------------------------------------------------------------
# Running GPUs together
# ---------------------------------------------------------------------------


def _each(runs: Sequence[_GpuRun], step: Callable[[_GpuRun], None], parallel: bool) -> None:
    """``step`` on every run: one thread per GPU, or in index order."""
    if not parallel or len(runs) < 2:
        for run in runs:
            step(run)
        return
    # Here, not at the top: a daemon whose GPUs are already right never needs a pool.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(runs), thread_name_prefix="migd-gpu") as pool:
        for future in [pool.submit(step, run) for run in runs]:
            future.result()  # re-raises what is not a GPU failure (a bug, ReadOnlyError)


def _execute(
    runs: Sequence[_GpuRun],
    options: ReconcileOptions,
    reset_timeout: float,
    say: Callable[[str], None],
) -> dict[int, GpuResult]:
    """Run every GPU's work in its phases; each GPU's result by index."""
    _each(runs, _GpuRun.destroy_and_set_mode, options.parallel)
    pending = [r for r in runs if r.result is None and r.needs_reset]
    if pending:
        # Only the GPUs whose change is pending are reset, all with one command.
        names = ", ".join(str(r.index) for r in pending)
        say(f"resetting GPU {names} to activate the MIG mode change")
        bus_ids = [r.gpu.bus_id for r in pending]
        problem = run_reset_command(options.reset_command, bus_ids, reset_timeout)
        _each(pending, lambda r: r.after_reset(problem), options.parallel)
    _each(runs, _GpuRun.create_and_verify, options.parallel)
    results = {}
    for run in runs:
        assert run.result is not None, "the last phase decides every GPU"
        results[run.index] = run.result
    return results


def _serialized(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    """The progress callback, called by one thread at a time (GPU threads report)."""
    if progress is None:
        return lambda line: None
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            progress(line)

    return say


def _headline(plan: GpuPlan, position: int, count: int) -> str:
    """The progress line that starts one GPU's change."""
    assert plan.target is not None
    if plan.exact is not None:
        return f"restoring GPU {plan.index} from the checkpoint ({position}/{count})"
    if plan.mode_only or not plan.target.mig_enabled:
        what = f"turning MIG {'on' if plan.target.mig_enabled else 'off'} on"
    else:
        what = f"applying {describe(plan.gpu, plan.target)} to"
    return f"{what} GPU {plan.index} ({position}/{count})"


def execute(
    adapter: NvmlAdapter,
    plan: NodePlan,
    options: ReconcileOptions,
    *,
    config_name: str = "",
    reset_timeout: float = DEFAULT_RESET_TIMEOUT,
) -> ReconcileResult:
    """Carry out ``plan`` on the node; report each GPU's outcome.

    ``plan`` was made from the node as read just before (the checkpoints come from
    it too). NVML failures on a GPU become that GPU's FAILED result.
    """
    started = time.monotonic()
    say = _serialized(options.progress)
    results: dict[int, GpuResult] = {}
    # A GPU that could not be read is FAILED and untouched, whatever the goal (with
    # nothing read, not even whether the goal covers it is known); its failure is
    # retried like any other, and the next read decides.
    for gpu_plan in plan.gpus:
        if gpu_plan.action is Action.UNREADABLE:
            gpu = gpu_plan.gpu
            reason = f"{gpu_plan.reason}; nothing was done on it"
            results[gpu.index] = GpuResult(gpu.index, GpuOutcome.FAILED, reason, gpu.error)
            say(f"GPU {gpu.index}: failed ({gpu.error}): {reason}")
    todo = []
    for gpu_plan in plan.gpus:
        index = gpu_plan.index
        if gpu_plan.action is Action.NOOP:
            results[index] = GpuResult(index, GpuOutcome.NOOP)
        elif gpu_plan.action is Action.SKIPPED:
            results[index] = GpuResult(index, GpuOutcome.SKIPPED, gpu_plan.reason)
        elif gpu_plan.action is Action.BLOCKED:
            results[index] = GpuResult(index, GpuOutcome.BLOCKED, gpu_plan.reason, "BLOCKED")
            say(f"GPU {index}: blocked: {gpu_plan.reason}")
        elif gpu_plan.action is Action.CHANGE:
            todo.append(gpu_plan)
    runs = [
        _GpuRun(
            adapter,
            gpu_plan,
            force=plan.force,
            options=options,
            reset_timeout=reset_timeout,
            say=say,
            headline=_headline(gpu_plan, position, len(todo)),
        )
        for position, gpu_plan in enumerate(todo, start=1)
    ]
    results.update(_execute(runs, options, reset_timeout, say))
    return ReconcileResult(
        config_name=config_name,
        gpus=tuple(results[i] for i in sorted(results)),
        desired=plan.desired,
        snapshot=adapter.snapshot() if runs else plan.snapshot,
        duration_seconds=time.monotonic() - started,
    )


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def format_result(result: ReconcileResult) -> list[str]:
    """One line per GPU for an operator: what happened and why."""
    desired = {d.index: d for d in result.desired}
    lines = []
    for g in result.gpus:
        try:
            gpu: GpuState | None = result.snapshot.gpu(g.index)
        except KeyError:
            gpu = None
        want = desired.get(g.index)
        layout = describe(gpu, want) if gpu is not None and want is not None else ""
        if g.outcome is GpuOutcome.APPLIED:
            reset = ", after a GPU reset" if g.reset else ""
            text = f"applied {layout} ({g.mutations} NVML changes{reset})"
        elif g.outcome is GpuOutcome.NOOP:
            text = f"already {layout}; nothing to do" if layout else "nothing to do"
        elif g.outcome is GpuOutcome.SKIPPED:
            text = f"skipped: {g.reason}"
        elif g.outcome is GpuOutcome.BLOCKED:
            text = f"BLOCKED, unchanged: {g.reason}"
        elif g.outcome is GpuOutcome.REBOOT_REQUIRED:
            text = f"REBOOT REQUIRED: {g.reason}"
        else:
            text = f"FAILED ({g.error}): {g.reason}"
        lines.append(f"GPU {g.index}: {text}")
    return lines
