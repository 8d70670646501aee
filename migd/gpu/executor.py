"""Executes plans through the NVML adapter: checkpoint, act, verify, roll back.

The imperative shell around the planner. Per GPU, in this order: destroy what the
plan drops (compute instances, then their GPU instance), change the MIG mode when it
differs, create the new GPU instances at their explicit placements and their compute
instances at theirs, then re-read the GPU and verify it against the desired layout.

GPUs run in parallel, one thread each (NVML is thread-safe), in three phases so that
mode changes that stay pending are activated by one reset of exactly those GPUs:
destroys and mode changes on every GPU; the reset; creates and verification.

Before a GPU is touched its geometry is checkpointed (``migd.formats.checkpoint_file``). When a
step fails, that GPU alone is put back to its checkpoint with explicit placements and
reported FAILED with the NVML error name; other GPUs keep their result. A plan that
would destroy an instance running a process is reported BLOCKED and the GPU is not
touched. A mode change that cannot be activated (the reset command fails, or the
driver answers RESET_REQUIRED as under VM passthrough) is reported REBOOT_REQUIRED,
once: nothing loops.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from migd.command import run_command
from migd.core.config import DEFAULT_RESET_COMMAND, DEFAULT_RESET_TIMEOUT
from migd.core.layout import DesiredGpu, GiProfile, GiSpec, GpuState, NodeSnapshot
from migd.core.planner import (
    CiCreate,
    GiCreate,
    GpuPlan,
    ci_profile,
    describe,
    describe_current,
    format_counts,
    layout_counts,
    layout_matches,
    place_cis,
    plan_node,
    profile_label,
)
from migd.errors import (
    EXIT_BLOCKED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REBOOT_REQUIRED,
    InvalidRequest,
    NvmlError,
)
from migd.formats.checkpoint_file import (
    Checkpoint,
    GpuRecord,
    capture_gpu,
    gpu_matches,
    restore_diff,
)

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
    reset_command: tuple[str, ...] = DEFAULT_RESET_COMMAND
    progress: Callable[[str], None] | None = field(default=None, compare=False)


# ---------------------------------------------------------------------------
# The work on one GPU
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuWork:
    """The mutations for one GPU, in execution order: destroys, mode, creates.

    Built from a planner's :class:`GpuPlan` or from a checkpoint's restore diff.
    ``translate_cis`` is True for plans, whose CI profile ids come from the table
    read before acting (for a GI profile no GI of which existed yet, a rule-based
    table): once the GI exists its real CI table decides ids and placements.
    Checkpoints hold real ids and placements and are created as recorded.
    """

    index: int
    target_mode: bool  # the MIG mode the GPU must end in
    destroy_cis: tuple[tuple[int, int], ...] = ()  # (gi_id, ci_id)
    destroy_gis: tuple[int, ...] = ()
    set_mode: bool | None = None
    activate_mode: bool = False  # current mode differs from target: a reset may follow
    create_cis: tuple[tuple[int, CiCreate], ...] = ()  # into GIs that stay
    create_gis: tuple[GiCreate, ...] = ()
    translate_cis: bool = True

    @property
    def noop(self) -> bool:
        return not (
            self.destroy_cis
            or self.destroy_gis
            or self.set_mode is not None
            or self.activate_mode
            or self.create_cis
            or self.create_gis
        )


def work_from_plan(plan: GpuPlan, gpu: GpuState, *, mode_only: bool = False) -> GpuWork:
    """The work of a plan; with ``mode_only`` only the mode change and what it needs."""
    mode_change = plan.set_mode is not None or plan.activate_mode
    if mode_only and not mode_change:
        return GpuWork(plan.index, plan.desired.mig_enabled)
    instances = {gi.id: gi for gi in gpu.instances}
    set_mode = plan.set_mode
    if set_mode is None and plan.activate_mode:
        # Already pending from an earlier run: asking again costs nothing and returns
        # the activation status, so a GPU that only a reboot can switch (passthrough)
        # is recognised without trying a reset that cannot work.
        set_mode = plan.desired.mig_enabled
    return GpuWork(
        index=plan.index,
        target_mode=plan.desired.mig_enabled,
        destroy_cis=tuple(
            (d.gi_id, ci.id) for d in plan.destroy for ci in instances[d.gi_id].compute_instances
        ),
        destroy_gis=tuple(d.gi_id for d in plan.destroy),
        set_mode=set_mode,
        activate_mode=plan.activate_mode,
        create_gis=() if mode_only else plan.create,
    )


def work_from_record(gpu: GpuState, record: GpuRecord) -> GpuWork:
    """The work that puts ``gpu`` back to the geometry in ``record``."""
    diff = restore_diff(gpu, record)
    return GpuWork(
        index=gpu.index,
        target_mode=record.mig_enabled,
        destroy_cis=diff.destroy_cis,
        destroy_gis=diff.destroy_gis,
        set_mode=diff.set_mode,
        activate_mode=gpu.mig_enabled != record.mig_enabled,
        create_cis=tuple(
            (gi_id, CiCreate(ci.profile_id, ci.placement)) for gi_id, ci in diff.create_cis
        ),
        create_gis=tuple(
            GiCreate(
                gi.profile_id,
                gi.placement,
                tuple(CiCreate(ci.profile_id, ci.placement) for ci in gi.compute_instances),
            )
            for gi in diff.create_gis
        ),
        translate_cis=False,
    )


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
    ci = ci_profile(planned, ci_id)
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


def reset_gpus(command: Sequence[str], bus_ids: Sequence[str], timeout: float) -> str | None:
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

Verify = Callable[[GpuState, GpuState], "str | None"]


class _GpuRun:
    """Executes one GPU's work in phases; ``result`` is set once the GPU is decided.

    Each phase runs in one thread at a time, so the counters need no lock.
    """

    def __init__(
        self,
        adapter: NvmlAdapter,
        gpu: GpuState,
        work: GpuWork,
        *,
        verify: Verify,
        options: ReconcileOptions,
        reset_timeout: float,
        say: Callable[[str], None],
        headline: str,
    ) -> None:
        self.adapter = adapter
        self.gpu = gpu
        self.index = gpu.index
        self.work = work
        self.verify = verify
        self.options = options
        self.reset_timeout = reset_timeout
        self.say = say
        self.headline = headline
        self.checkpoint = capture_gpu(gpu)  # taken before anything is touched
        self.mutations = 0
        self.reset = False
        self.needs_reset = False
        self.result: GpuResult | None = None

    # -- phases ------------------------------------------------------------------

    def destroy_and_set_mode(self) -> None:
        self.say(self.headline)
        try:
            self._destroy(self.work, self.gpu)
            self._set_mode(self.work)
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
        if current != self.work.target_mode:
            self._decide(
                GpuOutcome.REBOOT_REQUIRED,
                "PENDING_AFTER_RESET",
                "the MIG mode change is still pending after a GPU reset; reboot the node",
            )

    def create_and_verify(self) -> None:
        if self.result is not None:
            return
        try:
            self._create(self.work)
            problem = self.verify(self.gpu, self.adapter.gpu(self.index))
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

    def _destroy(self, work: GpuWork, state: GpuState) -> None:
        instances = {gi.id: gi for gi in state.instances}
        for gi_id, ci_id in work.destroy_cis:
            self._mutate(self.adapter.destroy_compute_instance, self.index, gi_id, ci_id)
        for gi_id in work.destroy_gis:
            self._mutate(self.adapter.destroy_gpu_instance, self.index, gi_id)
            gi = instances.get(gi_id)
            what = f" ({profile_label(state, gi.profile_id)} at {gi.placement})" if gi else ""
            self.say(f"GPU {self.index}: destroyed GI {gi_id}{what}")

    def _set_mode(self, work: GpuWork) -> None:
        status = ""
        if work.set_mode is not None:
            status = str(self._mutate(self.adapter.set_mig_mode, self.index, work.set_mode))
            word = "on" if work.set_mode else "off"
            self.say(f"GPU {self.index}: MIG mode {word} requested ({status})")
            if status == "RESET_REQUIRED":
                self._decide(
                    GpuOutcome.REBOOT_REQUIRED,
                    "RESET_REQUIRED",
                    f"the driver needs a reboot to turn MIG {word} "
                    "(the GPU cannot be reset here, as under VM passthrough)",
                )
                return
        elif not work.activate_mode:
            return
        current, pending = self.adapter.mig_mode(self.index)
        if current == work.target_mode:
            return
        if pending != work.target_mode:
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

    def _create(self, work: GpuWork) -> None:
        for gi_id, ci in work.create_cis:
            self._mutate(
                self.adapter.create_compute_instance, self.index, gi_id, ci.profile_id, ci.placement
            )
        for create in work.create_gis:
            gi_id = int(
                self._mutate(
                    self.adapter.create_gpu_instance,
                    self.index,
                    create.profile_id,
                    create.placement,
                )
            )
            cis = self._real_cis(create, gi_id) if work.translate_cis else create.cis
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
        """Put the GPU back to its checkpoint; returns how that went, for the reason."""
        try:
            now = self.adapter.gpu(self.index)
            if gpu_matches(now, self.checkpoint):
                return "the GPU was left as it was"
            diff = restore_diff(now, self.checkpoint)
            if diff.busy and not self.options.force:
                pids = ", ".join(str(p) for _, group in diff.busy for p in group)
                return f"not restored: instances to remove now run pid(s) {pids}"
            work = work_from_record(now, self.checkpoint)
            self._destroy(work, now)
            if work.set_mode is not None:
                status = self._mutate(self.adapter.set_mig_mode, self.index, work.set_mode)
                current, _ = self.adapter.mig_mode(self.index)
                if current != work.target_mode:
                    problem = (
                        "the driver needs a reboot"
                        if status == "RESET_REQUIRED"
                        else "resets are disabled (--skip-reset)"
                        if self.options.skip_reset
                        else reset_gpus(
                            self.options.reset_command, [self.gpu.bus_id], self.reset_timeout
                        )
                    )
                    if problem is not None:
                        return f"restored except the MIG mode, pending its change back ({problem})"
                    self.reset = True
            self._create(work)
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
        problem = reset_gpus(options.reset_command, [r.gpu.bus_id for r in pending], reset_timeout)
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


def _verify_layout(desired: DesiredGpu, mode_only: bool) -> Verify:
    def verify(before: GpuState, after: GpuState) -> str | None:
        if mode_only:
            if mode_matches(after, desired.mig_enabled):
                return None
            return (
                f"MIG mode reads {after.mig_enabled} (pending {after.mig_pending}) after the change"
            )
        if layout_matches(after, _translate_desired(desired, before, after)):
            return None
        return (
            f"the GPU holds {describe_current(after)} after the change, "
            f"not {describe(before, desired)}"
        )

    return verify


def mode_matches(gpu: GpuState, enabled: bool) -> bool:
    """Whether the GPU's MIG mode is ``enabled``, with no change pending."""
    return gpu.mig_enabled == gpu.mig_pending == enabled


def differences(
    snapshot: NodeSnapshot, desired: Sequence[DesiredGpu], *, mode_only: bool = False
) -> list[str]:
    """One line per GPU that does not hold its desired layout (``migd assert``).

    Only GPUs with a desired layout are judged, and every GPU that could not be read
    (its layout cannot be known to be right); ``mode_only`` compares the MIG mode.
    """
    lines = [f"GPU {g.index}: {g.unreadable_reason}" for g in snapshot.gpus if not g.readable]
    for want in desired:
        gpu = snapshot.gpu(want.index)
        if not gpu.readable:
            continue
        same = mode_matches(gpu, want.mig_enabled) if mode_only else layout_matches(gpu, want)
        if not same:
            lines.append(
                f"GPU {gpu.index}: holds {describe_current(gpu)}, wanted {describe(gpu, want)}"
            )
    return lines


def _result(
    gpu: GpuState, outcome: GpuOutcome, reason: str = "", error: str | None = None
) -> GpuResult:
    return GpuResult(index=gpu.index, outcome=outcome, reason=reason, error=error)


def unreadable_results(
    snapshot: NodeSnapshot, say: Callable[[str], None] = lambda line: None
) -> dict[int, GpuResult]:
    """A FAILED result for every GPU the snapshot could not read, by index.

    Such a GPU is never planned on or touched: its layout, even whether it is there,
    is unknown. Its failure is retried like any other, and the next read decides.
    """
    results = {}
    for gpu in snapshot.gpus:
        if gpu.readable:
            continue
        reason = f"{gpu.unreadable_reason}; nothing was done on it"
        results[gpu.index] = _result(gpu, GpuOutcome.FAILED, reason, gpu.error)
        say(f"GPU {gpu.index}: failed ({gpu.error}): {reason}")
    return results


def reconcile(
    adapter: NvmlAdapter,
    snapshot: NodeSnapshot,
    desired: Sequence[DesiredGpu],
    options: ReconcileOptions,
    *,
    config_name: str = "",
    reset_timeout: float = DEFAULT_RESET_TIMEOUT,
) -> ReconcileResult:
    """Bring every GPU with a desired layout to it; report each GPU's outcome.

    ``snapshot`` is the node as read just before (the plan and the checkpoints come
    from it). Raises InvalidRequest, before anything is touched, when a desired layout
    cannot be planned; NVML failures on a GPU become that GPU's FAILED result.
    """
    started = time.monotonic()
    say = _serialized(options.progress)
    # The one place an unreadable GPU is decided: FAILED and untouched, whatever the
    # config (with nothing read, not even whether the config covers it is known).
    results = unreadable_results(snapshot, say)
    desired = [d for d in desired if d.index not in results]
    plans = plan_node(snapshot, desired, force=options.force)
    todo: list[tuple[GpuState, GpuWork, DesiredGpu]] = []
    for plan in plans:
        gpu = snapshot.gpu(plan.index)
        if not gpu.mig_capable:
            results[gpu.index] = _result(gpu, GpuOutcome.SKIPPED, "not MIG-capable")
            continue
        work = work_from_plan(plan, gpu, mode_only=options.mode_only)
        if work.noop:
            results[gpu.index] = _result(gpu, GpuOutcome.NOOP)
        elif plan.blocked:
            reason = "; ".join(b.reason for b in plan.blocked)
            results[gpu.index] = _result(gpu, GpuOutcome.BLOCKED, reason, "BLOCKED")
            say(f"GPU {gpu.index}: blocked: {reason}")
        else:
            todo.append((gpu, work, plan.desired))
    runs = []
    for position, (gpu, work, want) in enumerate(todo, start=1):
        if options.mode_only or not want.mig_enabled:
            what = f"turning MIG {'on' if want.mig_enabled else 'off'} on"
        else:
            what = f"applying {describe(gpu, want)} to"
        runs.append(
            _GpuRun(
                adapter,
                gpu,
                work,
                verify=_verify_layout(want, options.mode_only),
                options=options,
                reset_timeout=reset_timeout,
                say=say,
                headline=f"{what} GPU {gpu.index} ({position}/{len(todo)})",
            )
        )
    results.update(_execute(runs, options, reset_timeout, say))
    for gpu in snapshot.gpus:
        if gpu.index not in results:
            why = "not covered by the selected config" if gpu.mig_capable else "not MIG-capable"
            results[gpu.index] = _result(gpu, GpuOutcome.SKIPPED, why)
    return ReconcileResult(
        config_name=config_name,
        gpus=tuple(results[i] for i in sorted(results)),
        desired=tuple(desired),
        snapshot=adapter.snapshot() if runs else snapshot,
        duration_seconds=time.monotonic() - started,
    )


def restore(
    adapter: NvmlAdapter,
    snapshot: NodeSnapshot,
    checkpoint: Checkpoint,
    options: ReconcileOptions,
    *,
    reset_timeout: float = DEFAULT_RESET_TIMEOUT,
) -> ReconcileResult:
    """Put every GPU recorded in ``checkpoint`` back to its exact geometry.

    GPUs are found by UUID; a recorded GPU missing from the node raises
    InvalidRequest before anything is touched. Busy instances block unless forced.
    """
    started = time.monotonic()
    by_uuid = {g.uuid: g for g in snapshot.gpus}
    missing = [r.uuid for r in checkpoint.gpus if r.uuid not in by_uuid]
    if missing:
        raise InvalidRequest(
            f"the checkpoint names GPUs this node does not have: {', '.join(missing)}"
        )
    say = _serialized(options.progress)
    results = unreadable_results(snapshot, say)
    desired: list[DesiredGpu] = []
    todo: list[tuple[GpuState, GpuRecord]] = []
    for record in checkpoint.gpus:
        gpu = by_uuid[record.uuid]
        if gpu.index in results:
            continue  # unreadable: its diff against an unknown state means nothing
        desired.append(
            DesiredGpu(
                gpu.index,
                record.mig_enabled,
                tuple(
                    sorted(
                        GiSpec(
                            gi.profile_id, tuple(sorted(c.profile_id for c in gi.compute_instances))
                        )
                        for gi in record.instances
                    )
                ),
            )
        )
        diff = restore_diff(gpu, record)
        if diff.noop:
            results[gpu.index] = _result(gpu, GpuOutcome.NOOP)
        elif diff.busy and not options.force:
            gis = ", ".join(f"GI {gi} (pid {', '.join(map(str, pids))})" for gi, pids in diff.busy)
            reason = f"restoring would destroy busy instances: {gis} (force overrides)"
            results[gpu.index] = _result(gpu, GpuOutcome.BLOCKED, reason, "BLOCKED")
            say(f"GPU {gpu.index}: blocked: {reason}")
        else:
            todo.append((gpu, record))

    def verify_record(record: GpuRecord) -> Verify:
        def verify(before: GpuState, after: GpuState) -> str | None:
            return None if gpu_matches(after, record) else "the GPU differs from the checkpoint"

        return verify

    runs = [
        _GpuRun(
            adapter,
            gpu,
            work_from_record(gpu, record),
            verify=verify_record(record),
            options=options,
            reset_timeout=reset_timeout,
            say=say,
            headline=f"restoring GPU {gpu.index} from the checkpoint ({n}/{len(todo)})",
        )
        for n, (gpu, record) in enumerate(todo, start=1)
    ]
    results.update(_execute(runs, options, reset_timeout, say))
    for gpu in snapshot.gpus:
        if gpu.index not in results:
            results[gpu.index] = _result(gpu, GpuOutcome.SKIPPED, "not in the checkpoint")
    return ReconcileResult(
        config_name="checkpoint",
        gpus=tuple(results[i] for i in sorted(results)),
        desired=tuple(sorted(desired, key=lambda d: d.index)),
        snapshot=adapter.snapshot() if runs else snapshot,
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
