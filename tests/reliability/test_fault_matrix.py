"""The fault matrix: every mutating NVML call migd makes × five error codes.

The node: three H200s flipping between two configs. Going from ``A`` to ``B`` (and
back), GPU 0 destroys and creates compute and GPU instances around a busy 3g.71gb it
keeps, GPU 1 does the same around a busy 1g.18gb, GPU 2 turns MIG on (off) with a GPU
reset. The fault is set on GPU 0 for the instance calls and on GPU 2 for
``nvmlDeviceSetMigMode``.

- ``migd apply`` with a fault that fails the call once: the faulted GPU is put back
  exactly as it was (every GPU instance at its placement, the busy ones never
  destroyed), the other GPUs reach their layouts untouched by the failure, the exit
  status is 1 and the output names the GPU and the NVML error; run again once the
  fault is spent, it converges.
- ``migd run`` with a fault that stays until it is cleared: the daemon stays up and
  reports the GPU precisely (``migd status``, metrics, the log), its retries fail
  the same way, the other GPUs hold their layouts, and the first retry after the
  fault is gone converges. A GPU that falls off the bus is reported failed alone
  while the other GPUs converge, and is converged once back.

The hang of an NVML call longer than the watchdog, under a real systemd, is at the
end: the watchdog restarts migd in the middle of a change and the new daemon
converges.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_support import BALANCED, SMALL, Daemon, migd, running, sim, wait_for, write_atomically
from reliability_support import (
    Samples,
    SimGpu,
    add_call_fault,
    alive,
    change_faults,
    clear_faults,
    clone_node,
    free_port,
    gpus,
    layout_config,
    metric,
    mutating_calls,
    scrape,
    settled,
    summary,
)

from migd.core import nvml_codes
from migd.sim import faults as sim_faults
from migd.sim.state import CallFault

BIG = {"1g.18gb": 4, "3g.71gb": 1}
A: dict[int, dict[str, int] | None] = {0: BALANCED, 1: BALANCED, 2: None}
B: dict[int, dict[str, int] | None] = {0: BIG, 1: SMALL, 2: SMALL}
CONFIGS = {"A": A, "B": B}

# The mutating calls migd makes, and the GPU whose change makes them in every flip.
CALLS = {
    "nvmlComputeInstanceDestroy": 0,
    "nvmlGpuInstanceDestroy": 0,
    "nvmlDeviceCreateGpuInstanceWithPlacement": 0,
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement": 0,
    "nvmlDeviceSetMigMode": 2,
}
# Mutating calls the simulator provides that migd never makes (it always places).
UNUSED = ("nvmlDeviceCreateGpuInstance", "nvmlGpuInstanceCreateComputeInstance")
CODES = ("IN_USE", "INSUFFICIENT_RESOURCES", "GPU_IS_LOST", "NO_PERMISSION", "UNKNOWN")
MATRIX = list(itertools.product(CALLS, CODES))
# One fault per code and per call, for the default run; the whole matrix in the soak.
DIAGONAL = [(call, CODES[i]) for i, call in enumerate(CALLS)]


def config(selected: str, settings: str = "") -> str:
    return layout_config(CONFIGS, selected=selected, settings=settings)


def apply(state: Path, config_file: Path, name: str) -> subprocess.CompletedProcess[str]:
    return migd("--simulate", str(state), "apply", "-f", str(config_file), "-c", name, timeout=120)


def placements(gpu: SimGpu) -> list[tuple[str, int, int]]:
    return sorted((i.profile, i.start, i.size) for i in gpu.instances)


@dataclass(frozen=True)
class Node:
    directory: Path
    config: Path
    base: Path  # holds A, with a process on GPU 0's 3g.71gb and on GPU 1's 1g.18gb at 2
    before: tuple[SimGpu, ...]
    after: tuple[SimGpu, ...]  # B, reached without a fault
    busy: frozenset[int]  # serials of the busy GPU instances


def _gi(gpu: SimGpu, profile: str, start: int) -> int:
    return next(i.gi for i in gpu.instances if i.profile == profile and i.start == start)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Node:
    directory = tmp_path_factory.mktemp("faults")
    config_file = directory / "config.yaml"
    config_file.write_text(config("A"))
    base = directory / "base.json"
    sim("init", str(base), "--gpu", "H200x3")
    done = apply(base, config_file, "A")
    assert done.returncode == 0, done.stdout + done.stderr
    held = gpus(base)
    sim("process", str(base), "add", "--gpu", "0", "--gi", str(_gi(held[0], "3g.71gb", 4)),
        "--pid", "5000")  # fmt: skip
    sim("process", str(base), "add", "--gpu", "1", "--gi", str(_gi(held[1], "1g.18gb", 2)),
        "--pid", "5001")  # fmt: skip
    busy = frozenset(
        i.serial
        for g in held[:2]
        for i in g.instances
        if (g.index, i.profile, i.start) in ((0, "3g.71gb", 4), (1, "1g.18gb", 2))
    )
    reference = directory / "reference.json"
    clone_node(base, reference)
    done = apply(reference, config_file, "B")
    assert done.returncode == 0, done.stdout + done.stderr
    return Node(directory, config_file, base, held, gpus(reference), busy)


# ---------------------------------------------------------------------------
# migd apply: a fault that fails the call once
# ---------------------------------------------------------------------------


def one_fault(node: Node, call: str, code: str) -> list[str]:
    """Apply B with ``call`` failing once with ``code``; the problems found (none: good)."""
    faulted = CALLS[call]
    state = node.directory / f"apply-{call}-{code}.json"
    clone_node(node.base, state)
    add_call_fault(state, CallFault(call=call, gpu=faulted, code=nvml_codes.CODES[code], count=1))
    problems = []
    failed = apply(state, node.config, "B")
    out = failed.stdout
    if failed.returncode != 1:
        problems.append(f"exit {failed.returncode}, not 1")
    if f"GPU {faulted}: FAILED ({code}): {call}" not in out:
        problems.append(f"no 'GPU {faulted}: FAILED ({code})' line in:\n{out}{failed.stderr}")
    if "restored to its previous layout" not in out and "left as it was" not in out:
        problems.append(f"GPU {faulted} not reported restored:\n{out}")
    held = gpus(state)
    if placements(held[faulted]) != placements(node.before[faulted]):
        problems.append(f"GPU {faulted} not restored: {placements(held[faulted])}")
    if (held[faulted].mig, held[faulted].pending) != (
        node.before[faulted].mig,
        node.before[faulted].pending,
    ):
        problems.append(f"GPU {faulted}: MIG mode not restored")
    present = frozenset(s for g in held for s in g.serials())
    if not node.busy <= present:
        problems.append("a busy instance was destroyed")
    for gpu, want in zip(held, node.after, strict=True):
        if gpu.index == faulted:
            continue
        if placements(gpu) != placements(want) or gpu.mig != want.mig:
            problems.append(f"GPU {gpu.index} holds {placements(gpu)}, not its layout")
        if f"GPU {gpu.index}: applied" not in out:
            problems.append(f"GPU {gpu.index} not reported applied")
        # Instances the change keeps are the same instances as without the fault.
        kept = node.after[gpu.index].serials() & node.before[gpu.index].serials()
        if not kept <= gpu.serials():
            problems.append(f"GPU {gpu.index}: an instance it keeps was recreated")
    retried = apply(state, node.config, "B")  # the fault is spent: gone
    if retried.returncode != 0:
        problems.append(f"retry exit {retried.returncode}: {retried.stdout}")
    final = gpus(state)
    if [placements(g) for g in final] != [placements(g) for g in node.after]:
        problems.append("the retry did not converge")
    if not node.busy <= frozenset(s for g in final for s in g.serials()):
        problems.append("a busy instance was destroyed by the retry")
    return problems


def test_migd_apply_restores_the_faulted_gpu_for_every_call_and_code(node: Node) -> None:
    failures = {(call, code): one_fault(node, call, code) for call, code in MATRIX}
    good = sum(not p for p in failures.values())
    summary(
        "fault matrix, migd apply",
        f"{good}/{len(MATRIX)} faults survived ({len(CALLS)} mutating calls × "
        f"{len(CODES)} codes): faulted GPU restored, others applied, retry converged",
    )
    problems = [f"{call} {code}: {p}" for (call, code), ps in failures.items() for p in ps]
    assert not problems, "\n".join(problems)


def test_migd_never_makes_the_unplaced_create_calls(node: Node) -> None:
    # A fault on them could never fire: migd always creates at an explicit placement.
    state = node.directory / "reference.json"
    stats = json.loads(migd("sim", "stats", str(state), "--json").stdout)
    for symbol in UNUSED:
        assert symbol not in stats
    for symbol in CALLS:
        assert symbol in stats


# ---------------------------------------------------------------------------
# migd run: a fault that stays until it is cleared
# ---------------------------------------------------------------------------

DAEMON_SETTINGS = """\
  metrics: {address: null}
  drift-check: {interval: 0}
  retry: {initial: 0.3s, max: 0.6s}"""


@contextlib.contextmanager
def daemon_on(node: Node, directory: Path) -> Iterator[tuple[Daemon, str]]:
    port = free_port()

    def prepare(daemon: Daemon) -> None:
        clone_node(node.base, daemon.state)

    with running(
        directory,
        config("A", DAEMON_SETTINGS),
        "--metrics-address",
        f"127.0.0.1:{port}",
        gpus="H200x3",
        prepare=prepare,
    ) as daemon:
        daemon.ready()
        yield daemon, f"http://127.0.0.1:{port}/metrics"


def flip(daemon: Daemon, target: str) -> dict:
    """Edit the file to select ``target``; the state once the watcher's reload settled."""
    generation = daemon.state_doc()["reload_generation"]
    write_atomically(daemon.config, config(target, DAEMON_SETTINGS))
    return settled(daemon, generation + 1)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


def persistent_fault(
    node: Node, daemon: Daemon, url: str, call: str, code: str, target: str
) -> str:
    """One case; returns the summary of what was checked (raises on a problem)."""
    faulted = CALLS[call]
    gpu = str(faulted)
    before = scrape(url)
    held_before = gpus(daemon.state)
    log_mark = len(daemon.log())
    add_call_fault(daemon.state, CallFault(call=call, gpu=faulted, code=nvml_codes.CODES[code]))
    doc = flip(daemon, target)

    # Reported precisely, while the fault stays.
    assert doc["phase"] == "degraded", doc["status"]
    view = doc["gpus"][faulted]
    assert not view["in_sync"] and view["outcome"] == "failed", view
    assert f"NVML_ERROR_{code}" in view["reason"] and call in view["reason"], view
    assert f"GPU {faulted} failed: {call}" in doc["status"], doc["status"]
    others = [g for g in doc["gpus"] if g["index"] != faulted]
    assert all(g["in_sync"] for g in others), others
    status = daemon.status()
    assert status.returncode == 1 and f"GPU {faulted}" in status.stdout
    now = scrape(url)
    assert metric(now, "migd_gpu_config_in_sync", gpu=gpu) == 0
    assert metric(now, "migd_gpu_last_reconcile_outcome", gpu=gpu, outcome="failed") == 1
    assert delta(now, before, "migd_reconciles_total", trigger="file", result="failed") == 1
    assert delta(now, before, "migd_apply_errors_total", gpu=gpu, reason=code) >= 1
    log = daemon.log()[log_mark:]
    assert f"GPU {faulted}: FAILED ({code}): {call}" in log, log
    assert f"NVML_ERROR_{code}" in log

    # The faulted GPU: restored when its restore does not need the failing call,
    # otherwise reported as not restored; never a busy instance destroyed.
    held = between_retries(daemon)
    restorable = "restoring it failed too" not in view["reason"]
    if restorable:
        assert placements(held[faulted]) == placements(held_before[faulted]), view["reason"]
    assert node.busy <= {s for g in held for s in g.serials()}
    others_now = {g.index: g.serials() for g in held if g.index != faulted}

    # The fault gone, a retry converges; the other GPUs are not touched again.
    clear_faults(daemon.state)
    wait_for(lambda: daemon.state_doc().get("phase") == "ready", "ready after the retry", 30)
    assert daemon.process is not None and daemon.process.poll() is None
    after = scrape(url)
    assert delta(after, before, "migd_reconciles_total", trigger="retry", result="applied") == 1
    retries_failed = delta(after, before, "migd_reconciles_total", trigger="retry", result="failed")
    assert delta(after, before, "migd_apply_errors_total", gpu=gpu, reason=code) == (
        1 + retries_failed
    )
    assert delta(after, before, "migd_apply_errors_total") == 1 + retries_failed
    final = gpus(daemon.state)
    want = CONFIGS[target]
    for g in final:
        assert g.counts() == (want[g.index] or {}), (g.index, g.counts())
        if g.index != faulted:
            assert g.serials() == others_now[g.index]
    return "restored" if restorable else "reported not restored"


def between_retries(daemon: Daemon) -> tuple[SimGpu, ...]:
    """The node as a failed reconcile left it: read while no retry runs (the daemon
    says degraded, and the same reconcile is the last one before and after)."""

    def read() -> tuple[SimGpu, ...] | None:
        before = daemon.state_doc()
        if before.get("phase") != "degraded":
            return None
        held = gpus(daemon.state)
        after = daemon.state_doc()
        same = after.get("last_reconcile_time") == before.get("last_reconcile_time")
        return held if same and after.get("phase") == "degraded" else None

    return wait_for(read, "a moment between retries", timeout=30, interval=0.01)


def run_daemon_matrix(node: Node, directory: Path, cases: list[tuple[str, str]]) -> None:
    outcomes: dict[str, int] = {}
    with daemon_on(node, directory) as (daemon, url):
        targets = itertools.cycle(["B", "A"])
        for call, code in cases:
            target = next(targets)
            outcome = persistent_fault(node, daemon, url, call, code, target)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        # Every mutating call the node saw is one migd counted, and the other way round.
        samples = scrape(url)
        assert metric(samples, "migd_nvml_mutations_total") == mutating_calls(daemon.state)
        present = {s for g in gpus(daemon.state) for s in g.serials()}
        assert node.busy <= present
        assert alive(daemon.pid)
    summary(
        f"fault matrix, migd run ({'diagonal' if len(cases) < len(MATRIX) else 'full'})",
        f"{len(cases)}/{len(cases)} persistent faults survived: daemon alive, GPU reported "
        f"in status, metrics and log ({outcomes.get('restored', 0)} restored, "
        f"{outcomes.get('reported not restored', 0)} whose restore needed the failing call), "
        "others untouched, converged once the fault was cleared",
    )


def test_the_daemon_survives_one_fault_per_call_and_code(node: Node, tmp_path: Path) -> None:
    run_daemon_matrix(node, tmp_path, DIAGONAL)


@pytest.mark.soak
def test_the_daemon_survives_every_fault_of_the_matrix(node: Node, tmp_path: Path) -> None:
    run_daemon_matrix(node, tmp_path, MATRIX)


def test_a_lost_gpu_is_reported_and_converged_once_back(node: Node, tmp_path: Path) -> None:
    """GPU 0 falls off the bus just before a reload: every NVML call on it fails with
    GPU_IS_LOST. GPU 0 alone fails, untouched; GPUs 1 and 2 reach B meanwhile."""
    with daemon_on(node, tmp_path) as (daemon, url):
        before = scrape(url)
        untouched = gpus(daemon.state)[0]
        change_faults(daemon.state, lambda n: sim_faults.add_lost_gpu(n, 0))
        doc = flip(daemon, "B")
        assert doc["phase"] == "degraded"
        lost = doc["gpus"][0]
        assert not lost["in_sync"] and lost["outcome"] == "failed", lost
        assert "unreadable: GPU_IS_LOST" in lost["reason"], lost
        assert "GPU 0 failed: unreadable: GPU_IS_LOST" in doc["status"], doc["status"]
        assert "B, 2/3 GPUs in sync" in doc["status"], doc["status"]
        assert all(g["in_sync"] for g in doc["gpus"][1:]), doc["gpus"]
        samples = scrape(url)
        assert metric(samples, "migd_gpu_config_in_sync", gpu="0") == 0
        assert all(metric(samples, "migd_gpu_config_in_sync", gpu=str(i)) == 1 for i in (1, 2))
        assert metric(samples, "migd_ready") == 0
        assert delta(samples, before, "migd_apply_errors_total", gpu="0", reason="GPU_IS_LOST") >= 1
        assert "GPU 0: FAILED (GPU_IS_LOST): unreadable: GPU_IS_LOST" in daemon.log()
        held = gpus(daemon.state)
        assert held[0] == untouched
        assert [g.counts() for g in held[1:]] == [SMALL, SMALL]
        assert alive(daemon.pid)
        # Back on the bus: a retry converges GPU 0.
        clear_faults(daemon.state)
        wait_for(lambda: daemon.state_doc().get("phase") == "ready", "ready once back", 30)
        assert [g.counts() for g in gpus(daemon.state)] == [BIG, SMALL, SMALL]
        assert metric(scrape(url), "migd_gpu_config_in_sync") == 3
    summary(
        "fault matrix, lost GPU",
        "GPU 0 lost before a reload: daemon alive, GPU 0 failed with GPU_IS_LOST and "
        "untouched, GPUs 1 and 2 converged meanwhile; GPU 0 converged once back",
    )
