"""The executor on simulated nodes: layouts, transitions, busy instances, faults, resets."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from geometry_support import (
    A100,
    H200,
    add_fault,
    add_process,
    apply_text,
    config_text,
    delta,
    edit_node,
    geometry,
    gi_ids,
    make_node,
    mutating_calls,
    read_node,
    resolve,
    restart_from,
    scratch_dir,
    sim_reset_command,
    snapshot,
    stats,
)
from planning_support import best_keep, feasible_multisets, gpu, spec_options
from process_support import end, ended, finishes_within

from migd.core.compare import layout_matches
from migd.core.layout import DesiredGpu, GiSpec
from migd.core.names import layout_counts
from migd.core.planner import plan_gpu, plan_node
from migd.gpu.executor import GpuOutcome, ReconcileOptions, execute, run_reset_command
from migd.gpu.nvml import NvmlAdapter
from migd.sim import node as sim_node
from migd.sim.symbols import MUTATING

# Profile enumeration asks every index until INVALID_ARGUMENT, past NOT_SUPPORTED ones:
# those answers are the protocol, not failures.
_ENUMERATION = {
    "nvmlDeviceGetGpuInstanceProfileInfoV",
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV",
}


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    with scratch_dir(tmp_path) as path:
        yield path


def unexpected_failures(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {
        symbol: bad
        for symbol, results in counts.items()
        if (
            bad := {
                r: n
                for r, n in results.items()
                if r != "SUCCESS"
                and not (symbol in _ENUMERATION and r in ("NOT_SUPPORTED", "INVALID_ARGUMENT"))
            }
        )
    }


DEMO = "1g.18gb=2,2g.35gb=1,3g.71gb=1"


def test_demo_layout_on_eight_h200_then_nothing_to_do(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [H200] * 8)
    text = config_text({"demo": DEMO})
    lines: list[str] = []
    first = apply_text(text, "demo", ReconcileOptions(progress=lines.append))
    assert first.exit_code == 0
    assert [g.outcome for g in first.gpus] == [GpuOutcome.APPLIED] * 8
    # One mode change, four GIs and four CIs per GPU, nothing failed.
    assert [g.mutations for g in first.gpus] == [9] * 8
    counts = stats(state)
    assert mutating_calls(counts) == 72
    assert unexpected_failures(counts) == {}
    assert "applying 1g.18gb×2+2g.35gb+3g.71gb to GPU 3 (4/8)" in lines
    assert "GPU 3: created 3g.71gb at 4:4" in lines
    for g in first.snapshot.gpus:
        assert sorted(Counter(p for p, *_ in geometry(read_node(state))[g.index][2]).items()) == [
            (9, 1),
            (14, 1),
            (19, 2),
        ]
    second = apply_text(text, "demo")
    assert second.exit_code == 0
    assert all(g.outcome is not GpuOutcome.APPLIED for g in second.gpus)
    assert {g.outcome for g in second.gpus} == {GpuOutcome.NOOP}
    assert mutating_calls(stats(state)) == 72


def test_every_feasible_h200_layout_from_empty_with_one_create_per_gi(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [H200])
    with NvmlAdapter.open() as nvml:
        nvml.set_mig_mode(0, True)
        layouts = sorted(feasible_multisets(nvml.gpu(0)) - {()})
        assert len(layouts) == 127
        empty = DesiredGpu(0, True, ())
        for ids in layouts:
            before = stats(state)
            snap = nvml.snapshot()
            table = snap.gpu(0)
            want = DesiredGpu(
                0,
                True,
                tuple(sorted(GiSpec(p, (table.profile_by_id(p).full_ci().id,)) for p in ids)),
            )
            result = execute(nvml, plan_node(snap, [want]), ReconcileOptions())
            assert result.gpus[0].outcome is GpuOutcome.APPLIED, (ids, result.gpus[0])
            made = delta(stats(state), before)
            assert made["nvmlDeviceCreateGpuInstanceWithPlacement"] == {"SUCCESS": len(ids)}
            assert made["nvmlGpuInstanceCreateComputeInstanceWithPlacement"] == {
                "SUCCESS": len(ids)
            }
            assert unexpected_failures(made) == {}, ids
            assert sorted(gi.profile_id for gi in nvml.gpu(0).instances) == list(ids)
            cleared = execute(nvml, plan_node(nvml.snapshot(), [empty]), ReconcileOptions())
            assert cleared.gpus[0].outcome is GpuOutcome.APPLIED
    assert unexpected_failures(stats(state)) == {}


def _names(layout_specs: list[GiSpec]) -> str:
    """A layout as config text counts (resolution turns it back into specs)."""
    counts = layout_counts(gpu(H200), layout_specs)
    return ",".join(f"{name}={n}" for name, n in counts)


def test_random_transitions_keep_what_both_layouts_share(scratch: Path) -> None:
    rng = random.Random(20261128)
    state = make_node(scratch / "s.json", [H200])
    table = gpu(H200)
    feasible = sorted(feasible_multisets(table))
    options = spec_options(table)
    pid = 5000
    kept_total = 0
    for _ in range(30):
        a = _names([rng.choice(options[p]) for p in rng.choice(feasible)])
        b = _names([rng.choice(options[p]) for p in rng.choice(feasible)])
        text = config_text({"a": a, "b": b})
        assert apply_text(text, "a").exit_code == 0
        before = snapshot()
        desired_b = resolve(before, text, "b")[0]
        plan = plan_gpu(before.gpu(0), desired_b)
        expected_kept = best_keep(before.gpu(0), desired_b)[1]
        assert len(plan.keep) == expected_kept
        # Work runs in every instance the new layout keeps.
        busy = {}
        for gi in before.gpu(0).instances:
            if gi.id in plan.keep:
                pid += 1
                add_process(state, pid, gpu=0, gi=gi.id, ci=gi.compute_instances[0].id)
                busy[gi.id] = pid
        counts = stats(state)
        result = apply_text(text, "b")
        assert result.exit_code == 0, result.gpus[0]
        after = snapshot().gpu(0)
        survivors = {gi.id: gi for gi in after.instances}
        for gi in before.gpu(0).instances:
            if gi.id in plan.keep:
                assert survivors[gi.id].placement == gi.placement
                assert survivors[gi.id].profile_id == gi.profile_id
                assert survivors[gi.id].pids == (busy[gi.id],)
        assert "INSUFFICIENT_RESOURCES" not in str(delta(stats(state), counts))
        assert layout_matches(after, resolve(snapshot(), text, "b")[0])
        kept_total += len(plan.keep)
        # End the work so the next transition starts free.
        for p in busy.values():
            edit_node(state, lambda n, p=p: sim_node.remove_process(n, p))
    assert kept_total > 10  # the sample exercised keeping, not only rebuilding


def test_busy_instance_survives_when_kept_and_blocks_when_not(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [H200, H200])
    text = config_text(
        {
            "demo": DEMO,
            "keeps-3g": "3g.71gb=1,1g.18gb=4",
            "no-3g": "1g.18gb=7",
        }
    )
    assert apply_text(text, "demo").exit_code == 0
    three = gi_ids(read_node(state), 0)[(9, 4, 4)]
    add_process(state, 4242, gpu=0, gi=three, ci=0)

    kept = apply_text(text, "keeps-3g")
    assert kept.exit_code == 0
    after = read_node(state)
    assert gi_ids(after, 0)[(9, 4, 4)] == three
    assert {gi.id: gi.pids for gi in snapshot().gpu(0).instances}[three] == (4242,)

    before = geometry(read_node(state))
    mutations = mutating_calls(stats(state))
    blocked = apply_text(text, "no-3g")
    assert blocked.exit_code == 3
    assert blocked.gpus[0].outcome is GpuOutcome.BLOCKED
    assert "4242" in blocked.gpus[0].reason and f"GI {three}" in blocked.gpus[0].reason
    assert blocked.gpus[1].outcome is GpuOutcome.APPLIED  # the other GPU is not held back
    now = geometry(read_node(state))
    assert now[0] == before[0]
    # Every mutating call of this apply was on GPU 1.
    assert mutating_calls(stats(state)) - mutations == blocked.gpus[1].mutations > 0


def test_force_asks_nvml_to_destroy_busy_instances_and_restores_on_refusal(
    scratch: Path,
) -> None:
    state = make_node(scratch / "s.json", [H200])
    text = config_text({"demo": DEMO, "no-3g": "1g.18gb=7"})
    assert apply_text(text, "demo").exit_code == 0
    three = gi_ids(read_node(state), 0)[(9, 4, 4)]
    add_process(state, 4242, gpu=0, gi=three, ci=0)
    before = geometry(read_node(state))
    result = apply_text(text, "no-3g", ReconcileOptions(force=True))
    # The driver refuses to destroy a compute instance a process runs on.
    assert result.exit_code == 1
    assert result.gpus[0].error == "IN_USE"
    assert result.gpus[0].reason.endswith(
        ("restored to its previous layout", "the GPU was left as it was")
    )
    assert geometry(read_node(state)) == before


# --- a fault at each mutating call of a multi-GPU apply ---------------------------------

FROM = {"gpu0": "1g.18gb=2,2g.35gb=1,3g.71gb=1", "gpu2": "7g.141gb=1"}


def _fault_node(scratch: Path):  # type: ignore[no-untyped-def]
    """GPU 0 demo, GPU 1 MIG off, GPU 2 one 7g; the target is 1c/3g mix on all."""
    state = make_node(scratch / "s.json", [H200] * 3)
    text = (
        "version: v1\nmig-configs:\n"
        "  start:\n"
        "    - devices: [0]\n      mig-enabled: true\n      mig-devices: "
        '{"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1}\n'
        "    - devices: [2]\n      mig-enabled: true\n      mig-devices: {7g.141gb: 1}\n"
        "  target:\n"
        "    - devices: all\n      mig-enabled: true\n      mig-devices: "
        '{"1c.3g.71gb": 2, "3g.71gb": 1}\n'
    )
    assert apply_text(text, "start").exit_code == 0
    return state, text


def test_fault_at_each_mutating_call_restores_only_the_failing_gpu(scratch: Path) -> None:
    state, text = _fault_node(scratch)
    start = read_node(state)
    restart_from(state, start)
    clean = apply_text(text, "target")
    assert clean.exit_code == 0
    target = geometry(read_node(state))
    started = geometry(start)
    # Mutating calls per GPU and symbol in a clean run, each one a place to fail.
    per_gpu: dict[int, Counter[str]] = {}
    for g in clean.gpus:
        restart_from(state, start)
        one = apply_text(
            text.replace("devices: all", f"devices: [{g.index}]"),
            "target",
        )
        assert one.exit_code == 0
        per_gpu[g.index] = Counter(
            {s: r.get("SUCCESS", 0) for s, r in stats(state).items() if s in MUTATING}
        )
    assert sum(sum(c.values()) for c in per_gpu.values()) == sum(g.mutations for g in clean.gpus)
    cases = 0
    for index, calls in per_gpu.items():
        for symbol, n in calls.items():
            for after in range(n):
                restart_from(state, start)
                add_fault(state, symbol, "INSUFFICIENT_RESOURCES", after=after, gpu=index)
                result = apply_text(text, "target")
                assert result.exit_code == 1, (index, symbol, after)
                failed = result.gpus[index]
                assert failed.outcome is GpuOutcome.FAILED
                assert failed.error == "INSUFFICIENT_RESOURCES"
                assert failed.reason.endswith(
                    ("restored to its previous layout", "the GPU was left as it was")
                ), failed.reason
                now = geometry(read_node(state))
                for other in now:
                    want = started[other] if other == index else target[other]
                    assert now[other] == want, (index, symbol, after, other)
                cases += 1
    assert cases == sum(sum(c.values()) for c in per_gpu.values()) >= 20


# --- MIG mode changes and resets -----------------------------------------------------


def test_ampere_pending_mode_change_resets_only_that_gpu(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [A100, H200, A100])
    resets = scratch / "resets.log"
    text = (
        "version: v1\nmig-configs:\n  on:\n"
        "    - devices: [0, 1]\n      mig-enabled: true\n      mig-devices: {3g: 2}\n"
    )
    options = ReconcileOptions(reset_command=sim_reset_command(state, resets))
    result = apply_text(text, "on", options)
    assert result.exit_code == 0, result.gpus
    a100, h200, untouched = result.gpus
    assert (a100.outcome, a100.reset) == (GpuOutcome.APPLIED, True)
    assert (h200.outcome, h200.reset) == (GpuOutcome.APPLIED, False)
    assert untouched.outcome is GpuOutcome.SKIPPED
    assert resets.read_text().split() == [read_node(state).gpus[0].bus_id]
    node = read_node(state)
    assert (node.gpus[0].mig_current, node.gpus[0].mig_pending) == (1, 1)
    assert len(node.gpus[0].gpu_instances) == 2 and len(node.gpus[1].gpu_instances) == 2
    assert (node.gpus[2].mig_current, node.gpus[2].gpu_instances) == (0, ())


def test_failed_reset_reports_reboot_required_once(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [A100, H200])
    text = config_text({"on": "3g=2"})
    options = ReconcileOptions(reset_command=("false", "{bus_ids}"))
    for _ in range(2):
        result = apply_text(text, "on", options)
        assert result.exit_code == 4
        assert result.gpus[0].outcome is GpuOutcome.REBOOT_REQUIRED
        assert "could not be reset" in result.gpus[0].reason
        assert result.gpus[1].outcome in (GpuOutcome.APPLIED, GpuOutcome.NOOP)
    node = read_node(state)
    assert (node.gpus[0].mig_current, node.gpus[0].mig_pending) == (0, 1)


SH = "/bin/sh"
BUS_ID = "00000000:18:00.0"


def test_a_hanging_reset_command_is_killed_at_its_timeout_with_what_it_started(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "child.pid"
    command = (SH, "-c", f"sleep 60 & echo $! > {pidfile}; wait", "reset", "{bus_ids}")
    problem = finishes_within(10, lambda: run_reset_command(command, [BUS_ID], 0.5), "the reset")
    assert ended(int(pidfile.read_text())), "the reset command's child outlived it"
    assert problem == "/bin/sh did not finish within 0.5 s and was killed"


def test_a_reset_command_leaving_a_child_on_its_output_does_not_hold_migd(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "child.pid"
    # Resets (says so) and exits at once; its child keeps stdout and stderr for 60 s.
    script = f'sleep 60 & echo $! > {pidfile}; echo "reset $0"'
    try:
        problem = finishes_within(
            10,
            lambda: run_reset_command((SH, "-c", script, "{bus_ids}"), [BUS_ID], 30),
            "the reset",
        )
        assert problem is None
    finally:
        end(int(pidfile.read_text()))


def test_a_reset_command_that_fails_or_cannot_start_says_why() -> None:
    failing = (SH, "-c", "echo 'GPU is busy' >&2; exit 3", "{bus_ids}")
    assert run_reset_command(failing, [BUS_ID], 10) == "/bin/sh exited with status 3: GPU is busy"
    missing = ("/nonexistent/nvidia-smi", "-r", "-i", "{bus_ids}")
    assert run_reset_command(missing, [BUS_ID], 10) == "/nonexistent/nvidia-smi: command not found"


def test_passthrough_gpu_needs_a_reboot_and_is_not_reset(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [A100], passthrough=True)
    resets = scratch / "resets.log"
    options = ReconcileOptions(reset_command=sim_reset_command(state, resets))
    text = config_text({"on": "1g.5gb=7"})
    for attempt in (1, 2):
        result = apply_text(text, "on", options)
        assert result.exit_code == 4
        assert result.gpus[0].outcome is GpuOutcome.REBOOT_REQUIRED
        assert result.gpus[0].error == "RESET_REQUIRED"
        assert "reboot" in result.gpus[0].reason
        assert stats(state)["nvmlDeviceSetMigMode"] == {"SUCCESS": attempt}
    assert not resets.exists()


def test_skip_reset_leaves_the_change_pending(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [A100])
    result = apply_text(config_text({"on": "7g.40gb=1"}), "on", ReconcileOptions(skip_reset=True))
    assert result.exit_code == 4
    assert result.gpus[0].error == "RESET_SKIPPED"
    assert (read_node(state).gpus[0].mig_pending, read_node(state).gpus[0].mig_current) == (1, 0)


def test_mode_only_changes_the_mode_and_creates_nothing(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [H200, H200])
    text = config_text({"demo": DEMO})
    result = apply_text(text, "demo", ReconcileOptions(mode_only=True))
    assert result.exit_code == 0
    node = read_node(state)
    assert [(g.mig_current, g.gpu_instances) for g in node.gpus] == [(1, ()), (1, ())]
    result = apply_text(text, "demo", ReconcileOptions(mode_only=True))
    assert all(g.outcome is not GpuOutcome.APPLIED for g in result.gpus)


@pytest.mark.parametrize("parallel", [True, False])
def test_sequential_and_parallel_reach_the_same_geometry(scratch: Path, parallel: bool) -> None:
    state = make_node(scratch / "s.json", [H200] * 4)
    result = apply_text(config_text({"demo": DEMO}), "demo", ReconcileOptions(parallel=parallel))
    assert result.exit_code == 0
    assert len(set(geometry(read_node(state)).values())) == 1


def test_layout_needing_real_ci_tables_is_right_first_time_and_then_left_alone(
    scratch: Path,
) -> None:
    """On a fresh node no GI exists to describe its CI profiles, so the plan's CI ids and
    placements come from the rule table; the GIs' real tables decide (the H200's 3g CI
    spans 0:4, its double-memory 1g GI's own CI is the 26-SM profile 7)."""
    state = make_node(scratch / "s.json", [H200])
    text = config_text({"x": "1g.35gb=2,3g.71gb=1"})
    assert apply_text(text, "x").exit_code == 0  # one adapter: learns the tables on the way
    cis = {
        (gi.profile_id, c.profile_id, c.start, c.size)
        for gi in read_node(state).gpus[0].gpu_instances
        for c in gi.compute_instances
    }
    assert cis == {(15, 7, 0, 2), (9, 2, 0, 4)}
    calls = mutating_calls(stats(state))
    again = apply_text(text, "x")  # a new adapter that reads the real tables
    assert again.gpus[0].outcome is GpuOutcome.NOOP
    assert mutating_calls(stats(state)) == calls
