"""Crash points: migd killed with SIGKILL at every mutating NVML call of a change.

The change: four H200s go from one layout to another. GPU 0 keeps its busy
3g.71gb (a process runs on it) and trades its 2g.35gb for two 1g.18gb; GPU 1 keeps
four of its seven 1g.18gb (one of them busy) and trades three for a 3g.71gb; GPU 2
turns MIG on (a mode change and a GPU reset) and gets two 3g.71gb; GPU 3 loses its
four instances and turns MIG off. That is every kind of mutating call migd makes:
compute and GPU instances destroyed and created, the MIG mode set both ways.

For every N from 1 to the number of mutating calls the change makes, before and
after the call takes effect (``migd sim fault --kill-at N [--after-effect]``), the
simulator SIGKILLs the process making the N-th call; migd is then run again, as
systemd would restart it. It must converge to the desired layout, never destroy (or
even try to destroy) an instance that runs a process, never destroy an instance that
the change without a crash keeps, and leave no MIG-enabled GPU without instances
when its layout wants some. ``migd apply`` is killed at every point; ``migd run`` at
a few, in the middle of a reload.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_support import BALANCED, SMALL, Daemon, migd, running, sim, wait_for, write_atomically
from reliability_support import (
    SimGpu,
    add_call_fault,
    clone_node,
    gpus,
    layout_config,
    mutating_calls,
    mutating_results,
    set_kill,
    status_json,
    summary,
)

from migd.core.nvml_codes import IN_USE, UNKNOWN
from migd.sim.state import CallFault

BIG = {"1g.18gb": 4, "3g.71gb": 1}
TWO_3G = {"3g.71gb": 2}
BEFORE: dict[int, dict[str, int] | None] = {0: BALANCED, 1: SMALL, 2: None, 3: BALANCED}
AFTER: dict[int, dict[str, int] | None] = {0: BIG, 1: BIG, 2: TWO_3G, 3: None}
CONFIGS = {"before": BEFORE, "after": AFTER}
BUSY_PIDS = (4242, 4343)


@dataclass(frozen=True)
class Change:
    """The node before the change, and what the change does when nothing crashes."""

    directory: Path
    config: Path
    base: Path  # the node before the change (busy instances included)
    before: tuple[SimGpu, ...]
    after: tuple[SimGpu, ...]  # the node after the change without a crash
    mutations: int  # mutating NVML calls the change makes
    busy: frozenset[int]  # serials of the GPU instances that run a process
    kept: frozenset[int]  # serials of the instances the change keeps


def apply(
    state: Path, config: Path, name: str = "after", *args: str
) -> subprocess.CompletedProcess[str]:
    return migd(
        "--simulate", str(state), "apply", "-f", str(config), "-c", name, *args, timeout=120
    )


def _gi(gpu: SimGpu, profile: str, start: int) -> int:
    return next(i.gi for i in gpu.instances if i.profile == profile and i.start == start)


@pytest.fixture(scope="module")
def change(tmp_path_factory: pytest.TempPathFactory) -> Change:
    directory = tmp_path_factory.mktemp("crash")
    config = directory / "config.yaml"
    config.write_text(layout_config(CONFIGS, selected="after"))
    base = directory / "base.json"
    sim("init", str(base), "--gpu", "H200x4")
    done = apply(base, config, "before")
    assert done.returncode == 0, done.stdout + done.stderr
    node = gpus(base)
    sim("process", str(base), "add", "--gpu", "0", "--gi", str(_gi(node[0], "3g.71gb", 4)),
        "--ci", "0", "--pid", str(BUSY_PIDS[0]))  # fmt: skip
    sim("process", str(base), "add", "--gpu", "1", "--gi", str(_gi(node[1], "1g.18gb", 0)),
        "--pid", str(BUSY_PIDS[1]))  # fmt: skip
    busy = frozenset(
        i.serial
        for g in node[:2]
        for i in g.instances
        if (g.index, i.profile, i.start) in ((0, "3g.71gb", 4), (1, "1g.18gb", 0))
    )
    reference = directory / "reference.json"
    clone_node(base, reference)
    done = apply(reference, config)
    assert done.returncode == 0, done.stdout + done.stderr
    after = gpus(reference)
    assert [g.counts() for g in after] == [BIG, BIG, TWO_3G, {}]
    before_serials = frozenset(s for g in node for s in g.serials())
    kept = before_serials & frozenset(s for g in after for s in g.serials())
    assert busy <= kept
    return Change(directory, config, base, node, after, mutating_calls(reference), busy, kept)


def converged(node: tuple[SimGpu, ...], change: Change) -> list[str]:
    """Why the node does not hold the layout of the change (empty when it does)."""
    problems = []
    for got, want in zip(node, change.after, strict=True):
        if (got.mig, got.pending) != (want.mig, want.pending):
            problems.append(f"GPU {got.index}: MIG {got.mig}/{got.pending}, wanted {want.mig}")
        if got.counts() != want.counts():
            problems.append(f"GPU {got.index}: holds {got.counts()}, wanted {want.counts()}")
        if got.mig and not got.instances and want.instances:
            problems.append(f"GPU {got.index}: MIG enabled and empty")
        problems += [
            f"GPU {got.index}: GI {i.gi} has {i.cis} compute instances"
            for i in got.instances
            if i.cis != 1
        ]
    return problems


@dataclass(frozen=True)
class Outcome:
    point: str
    killed: bool
    converged: bool
    lost: int  # instances the uncrashed change keeps that are gone
    problems: tuple[str, ...]


def crash_apply(
    change: Change,
    at: int,
    after_effect: bool,
    *,
    fault: CallFault | None = None,
    args: tuple[str, ...] = (),
) -> Outcome:
    """Kill ``migd apply`` at mutating call ``at``, then run it again until it succeeds
    (at most three times: a ``fault`` not yet spent fails one run, whose retry converges)."""
    when = "after" if after_effect else "before"
    point = f"kill at {at} {when} effect"
    state = change.directory / f"kill-{at}-{when}-{'fault' if fault else 'plain'}.json"
    clone_node(change.base, state)
    if fault is not None:
        add_call_fault(state, fault)
    set_kill(state, at, after_effect)
    problems: list[str] = []
    first = apply(state, change.config, "after", *args)
    killed = first.returncode == -signal.SIGKILL
    if not killed:
        problems.append(f"not killed: exit {first.returncode}: {first.stdout}{first.stderr}")
    present = frozenset(s for g in gpus(state) for s in g.serials())
    if not change.busy <= present:
        problems.append("a busy instance was destroyed before the restart")
    for _ in range(3):  # the restart, and the retries a failure earns
        again = apply(state, change.config, "after", *args)
        if again.returncode == 0 or fault is None:
            break
    if again.returncode != 0:
        problems.append(f"restart exit {again.returncode}: {again.stdout}{again.stderr}")
    node = gpus(state)
    not_there = converged(node, change)
    problems += not_there
    final = frozenset(s for g in node for s in g.serials())
    lost = len(change.kept - final)
    if lost:
        problems.append(f"{lost} kept instance(s) destroyed")
    in_use = mutating_results(state, "IN_USE") - (fault is not None and fault.code == IN_USE)
    if in_use:
        problems.append(f"{in_use} destroy(s) of a busy instance tried")
    return Outcome(point, killed, not not_there, lost, tuple(problems))


def test_migd_apply_killed_at_every_mutating_call_converges_and_loses_nothing(
    change: Change,
) -> None:
    assert change.mutations >= 25  # destroys, creates and mode changes on four GPUs
    outcomes = [
        crash_apply(change, at, after_effect)
        for at in range(1, change.mutations + 1)
        for after_effect in (False, True)
    ]
    tried = len(outcomes)
    good = sum(o.converged and not o.problems for o in outcomes)
    lost = sum(o.lost for o in outcomes)
    summary(
        "crash points, migd apply",
        f"{good}/{tried} kill points converged ({change.mutations} mutating calls, "
        f"before and after effect), {sum(o.killed for o in outcomes)} killed, "
        f"{lost} instances lost",
    )
    problems = [f"{o.point}: {p}" for o in outcomes for p in o.problems]
    assert not problems, "\n".join(problems)


def test_a_kill_point_past_the_last_call_lets_the_change_finish(change: Change) -> None:
    state = change.directory / "past-the-end.json"
    clone_node(change.base, state)
    set_kill(state, change.mutations + 1, False)
    done = apply(state, change.config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not converged(gpus(state), change)
    assert mutating_calls(state) == change.mutations


# ``migd run``: the daemon holds the old layout, the file is edited, and the daemon is
# killed in the middle of the reconcile that follows; it is started again.
RUN_POINTS = ((1, False), (8, True), (15, False), (22, True), (28, False))


def test_migd_run_killed_in_a_reload_converges_after_a_restart(
    change: Change, tmp_path: Path
) -> None:
    tried = good = lost = 0
    for at, after_effect in RUN_POINTS:
        if at > change.mutations:
            continue
        tried += 1
        directory = tmp_path / f"run-{at}-{after_effect}"
        before = layout_config(CONFIGS, selected="before")

        def prepare(daemon: Daemon) -> None:
            clone_node(change.base, daemon.state)

        with running(directory, before, gpus="H200x4", prepare=prepare) as daemon:
            daemon.ready()
            assert status_json(daemon)["phase"] == "ready"
            set_kill(daemon.state, at, after_effect)
            write_atomically(daemon.config, layout_config(CONFIGS, selected="after"))
            assert daemon.wait(timeout=60) == -signal.SIGKILL
            present = frozenset(s for g in gpus(daemon.state) for s in g.serials())
            assert change.busy <= present
            mark = len(daemon.notify.snapshot())
            daemon.start()  # as systemd's Restart=on-failure would
            daemon.notify.wait(lambda m: "READY=1" in m, "READY=1", after=mark, timeout=60)
            doc = wait_for(lambda: (d := status_json(daemon))["phase"] == "ready" and d, "ready")
            assert doc["selected_config"] == "after"
            node = gpus(daemon.state)
            assert not converged(node, change), converged(node, change)
            final = frozenset(s for g in node for s in g.serials())
            lost += len(change.kept - final)
            assert mutating_results(daemon.state, "IN_USE") == 0
            good += 1
    summary(
        "crash points, migd run",
        f"{good}/{tried} kill points converged after a restart, {lost} instances lost",
    )
    assert lost == 0


# The same crash points while a GPU is being put back: GPU 0's second GPU-instance
# create fails once, so its restore (destroys and creates of its own) runs in the
# middle of the change; GPUs one after the other, so each kill point is one moment.
ROLLBACK_FAULT = CallFault(
    call="nvmlDeviceCreateGpuInstanceWithPlacement", gpu=0, code=UNKNOWN, after=1, count=1
)


@pytest.mark.soak
def test_migd_apply_killed_at_every_call_of_a_change_with_a_restore_converges(
    change: Change,
) -> None:
    reference = change.directory / "reference-with-restore.json"
    clone_node(change.base, reference)
    add_call_fault(reference, ROLLBACK_FAULT)
    failed = apply(reference, change.config, "after", "--sequential")
    assert failed.returncode == 1 and "restored to its previous layout" in failed.stdout
    # The failing call returns its error before it reaches the node: not a kill point.
    calls = mutating_calls(reference) - mutating_results(reference, "UNKNOWN")
    outcomes = [
        crash_apply(change, at, after_effect, fault=ROLLBACK_FAULT, args=("--sequential",))
        for at in range(1, calls + 1)
        for after_effect in (False, True)
    ]
    good = sum(o.converged and not o.problems for o in outcomes)
    summary(
        "crash points, migd apply with a restore",
        f"{good}/{len(outcomes)} kill points converged ({calls} mutating calls including "
        f"GPU 0's restore), {sum(o.lost for o in outcomes)} instances lost",
    )
    problems = [f"{o.point}: {p}" for o in outcomes for p in o.problems]
    assert not problems, "\n".join(problems)
