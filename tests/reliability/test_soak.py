"""The soak: hundreds of reloads mixing valid layouts, invalid files and injected faults.

One ``migd run`` on a simulated node. Each step edits the config file (an editor's
atomic save, seen by the file watcher) with one of:

- valid: every GPU gets one of three layouts, drawn at random (a GPU that keeps its
  layout is left alone; any other change destroys and creates instances);
- invalid: the next file of the invalid-config corpus;
- fault: a valid change whose GPU ``g`` fails once at a random mutating call with a
  random NVML error (``migd sim fault --call … --code … --gpu g --count 1``); the
  daemon restores that GPU, and its retry converges.

Every fourth step ``migd reload`` then reloads the file once more (a real round trip,
exit 0 or 2 as the file deserves). At the end the node holds the last valid layout,
``migd_reconciles_total`` (by trigger and result), ``migd_config_reloads_total`` and
``migd_apply_errors_total`` (by GPU and error) are exactly what the steps did,
``migd_nvml_mutations_total`` equals the mutating calls the simulator saw, and the
daemon's resident memory has grown by no more than a few MiB.

``-m "soak and not soak_long"``: 200 steps on 2 GPUs (``.ci/run``).
``-m soak_long``: 500 steps on 8 GPUs.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from daemon_support import BALANCED, SMALL, Daemon, running, wait_for, write_atomically
from reliability_support import (
    add_call_fault,
    alive,
    free_port,
    gpus,
    label_values,
    layout_config,
    metric,
    mutating_calls,
    replace_file,
    rss_kib,
    scrape,
    settled,
    summary,
)

from migd.core import nvml_codes
from migd.sim.state import CallFault

TWO_3G = {"3g.71gb": 2}
# Neither is contained in another: going from one to another destroys and creates,
# so every call below happens on a GPU that changes.
LAYOUTS = (BALANCED, SMALL, TWO_3G)
FAULT_CALLS = (
    "nvmlComputeInstanceDestroy",
    "nvmlGpuInstanceDestroy",
    "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
)
CODES = ("IN_USE", "INSUFFICIENT_RESOURCES", "GPU_IS_LOST", "NO_PERMISSION", "UNKNOWN")
CORPUS = sorted((Path(__file__).resolve().parents[1] / "data" / "invalid").iterdir())
SETTINGS = """\
  metrics: {address: null}
  drift-check: {interval: 0}
  retry: {initial: 0.2s, max: 0.4s}"""
RELOAD_EVERY = 4
WARM_UP = 20  # steps before the first memory reading
# Growth of the daemon's resident memory over the soak that counts as a leak.
MAX_RSS_GROWTH_KIB = 8 * 1024


def config(layouts: dict[int, dict[str, int]], step: int) -> str:
    return layout_config(
        {"soak": dict(layouts)}, selected="soak", settings=SETTINGS, comment=f"soak step {step}"
    )


@dataclass
class Expected:
    """What the steps did, in the daemon's counters' terms."""

    reconciles: Counter[tuple[str, str]] = field(default_factory=Counter)
    reloads: Counter[str] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)


def run_soak(directory: Path, gpu_count: int, steps: int, seed: int) -> None:
    rng = random.Random(seed)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    current = {i: BALANCED for i in range(gpu_count)}
    expected = Expected()
    expected.reconciles["startup", "applied"] += 1
    expected.reloads["success"] += 1
    invalid_files = iter(CORPUS * (steps // len(CORPUS) + 1))
    started_at = time.monotonic()
    rss_start = rss_end = 0
    warm_up = min(WARM_UP, steps // 2)
    with running(
        directory,
        config(current, 0),
        "--metrics-address",
        f"127.0.0.1:{port}",
        gpus=f"H200x{gpu_count}",
    ) as daemon:
        daemon.ready(timeout=60)
        valid = True
        for step in range(1, steps + 1):
            if step == warm_up:
                rss_start = rss_kib(daemon.pid)
            kind = rng.choices(("valid", "invalid", "fault"), weights=(3, 1, 1))[0]
            expected.kinds[kind] += 1
            generation = daemon.state_doc()["reload_generation"]
            if kind == "invalid":
                replace_file(daemon.config, next(invalid_files).read_bytes())
                doc = settled(daemon, generation + 1)
                assert not doc["last_reload_ok"], (step, doc["status"])
                expected.reloads["failure"] += 1
                valid = False
            else:
                wanted = {i: rng.choice(LAYOUTS) for i in range(gpu_count)}
                if kind == "fault":
                    gpu = rng.randrange(gpu_count)
                    wanted[gpu] = rng.choice([x for x in LAYOUTS if x != current[gpu]])
                    call, code = rng.choice(FAULT_CALLS), rng.choice(CODES)
                    fault = CallFault(call=call, gpu=gpu, code=nvml_codes.CODES[code], count=1)
                    add_call_fault(daemon.state, fault)
                write_atomically(daemon.config, config(wanted, step))
                doc = settled(daemon, generation + 1)
                assert doc["last_reload_ok"], (step, doc["status"])
                expected.reloads["success"] += 1
                if kind == "fault":
                    expected.reconciles["file", "failed"] += 1
                    expected.errors[str(gpu), code] += 1
                    # The fault is spent: the retry converges.
                    expected.reconciles["retry", "applied"] += 1
                    wait_for(
                        lambda: daemon.state_doc().get("phase") == "ready",
                        f"step {step}: ready after the retry",
                        timeout=30,
                        interval=0.02,
                    )
                else:
                    changed = wanted != current
                    expected.reconciles["file", "applied" if changed else "noop"] += 1
                    assert doc["phase"] == "ready", (step, doc["status"])
                current = wanted
                valid = True
            if step % RELOAD_EVERY == 0:
                reloaded = daemon.reload()
                assert reloaded.returncode == (0 if valid else 2), (step, reloaded.stderr)
                if valid:
                    expected.reconciles["reload", "noop"] += 1
                    expected.reloads["success"] += 1
                else:
                    expected.reloads["failure"] += 1
        wait_for(lambda: daemon.state_doc().get("phase") in ("ready", "degraded"), "settled")
        rss_end = rss_kib(daemon.pid)
        check_counters(daemon, url, expected, current)
    growth = rss_end - rss_start
    reloads = sum(expected.reloads.values()) - 1  # the startup load is not a reload
    summary(
        f"soak, {gpu_count} GPUs",
        f"{steps} steps ({expected.kinds['valid']} valid, {expected.kinds['invalid']} invalid, "
        f"{expected.kinds['fault']} faults), {reloads} reloads "
        f"({steps // RELOAD_EVERY} by migd reload) in {time.monotonic() - started_at:.0f} s; "
        f"counters add up; RSS {rss_start / 1024:.1f} MiB after {warm_up} steps, "
        f"{rss_end / 1024:.1f} MiB at the end ({growth / 1024:+.1f} MiB)",
    )
    assert growth < MAX_RSS_GROWTH_KIB, f"RSS grew by {growth} KiB"


def check_counters(
    daemon: Daemon, url: str, expected: Expected, last_valid: dict[int, dict[str, int]]
) -> None:
    assert alive(daemon.pid)
    held = gpus(daemon.state)
    assert {g.index: g.counts() for g in held} == last_valid
    assert all(g.mig and g.pending for g in held)
    samples = scrape(url)
    for (name, labels), value in samples.items():
        if name == "migd_reconciles_total":
            key = (dict(labels)["trigger"], dict(labels)["result"])
            assert value == expected.reconciles[key], (key, value, expected.reconciles)
    assert label_values(samples, "migd_config_reloads_total", "result") == {
        "success": expected.reloads["success"],
        "failure": expected.reloads["failure"],
    }
    errors = {
        (dict(labels)["gpu"], dict(labels)["reason"]): value
        for (name, labels), value in samples.items()
        if name == "migd_apply_errors_total"
    }
    assert errors == dict(expected.errors)
    assert metric(samples, "migd_nvml_mutations_total") == mutating_calls(daemon.state)
    assert metric(samples, "migd_ready") == 1


@pytest.mark.soak
def test_soak_200_steps_on_2_gpus(tmp_path: Path) -> None:
    run_soak(tmp_path, gpu_count=2, steps=200, seed=2)


@pytest.mark.soak
@pytest.mark.soak_long
def test_soak_500_steps_on_8_gpus(tmp_path: Path) -> None:
    run_soak(tmp_path, gpu_count=8, steps=500, seed=8)


def test_a_short_soak_in_the_default_run(tmp_path: Path) -> None:
    run_soak(tmp_path, gpu_count=2, steps=24, seed=24)
