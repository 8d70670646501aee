"""Time to apply a full 8-GPU reconfiguration, with a per-call latency set in the simulator.

NVML's mutating MIG calls take the driver time that a simulator does not: every
create and destroy is slowed by a call fault (``migd sim fault --call SYMBOL
--latency MS``). The figures are ASSUMPTIONS, not measurements — nothing was timed
on hardware — chosen inside the ranges commonly seen from ``nvidia-smi mig``:

- GPU instance create (with or without a placement): 150 ms;
- GPU instance destroy: 50 ms;
- compute instance create and destroy: 30 ms each;
- a call the driver refuses costs the same as one it performs (the simulator
  delays a call before deciding it); the latency charged to refused calls is
  reported apart, with what the sequential time would be if refusing cost nothing;
- queries get no added latency: the simulator's own cost per query (tens of µs)
  is within the 0.01–0.9 ms measured on a real H200.

migd in parallel (one thread per GPU, its default), migd one GPU after another
(``--sequential``) and the mig-parted model (sequential, as mig-parted is) each
apply the same change on the same simulated node; the mig-parted model is the
baseline. Parallel gains come from the latency model: on hardware they hold only
if the driver really serves MIG calls on different GPUs concurrently.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from bench.layouts import ALL_1G, BALANCED, Layout, text
from bench.simnode import CallCounts, clear_faults, counts_between, init_node, set_latencies, stats
from bench.stats import ratio
from bench.tools import migd_apply, migparted_apply

LATENCIES_MS: Mapping[str, float] = {
    "nvmlDeviceCreateGpuInstance": 150.0,
    "nvmlDeviceCreateGpuInstanceWithPlacement": 150.0,
    "nvmlGpuInstanceDestroy": 50.0,
    "nvmlGpuInstanceCreateComputeInstance": 30.0,
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement": 30.0,
    "nvmlComputeInstanceDestroy": 30.0,
}

# (name, layout every GPU holds before, layout every GPU gets)
SCENARIOS: tuple[tuple[str, Layout, Layout], ...] = (
    ("boot: empty -> balanced", (), BALANCED),
    ("balanced -> all 1g", BALANCED, ALL_1G),
)

MIGPARTED = "mig-parted model (sequential)"
MIGD_SEQ = "migd --sequential"
MIGD_PAR = "migd (parallel)"

Apply = Callable[[str, Mapping[int, Layout]], None]


def _migd(parallel: bool) -> Apply:
    def apply(state: str, layouts: Mapping[int, Layout]) -> None:
        result = migd_apply(state, layouts, parallel=parallel)
        if result.exit_code != 0:
            raise RuntimeError(f"migd apply failed: {[g.reason for g in result.gpus]}")

    return apply


def _migparted(state: str, layouts: Mapping[int, Layout]) -> None:
    # No 1g.35gb in these layouts: the tie order cannot matter.
    results = migparted_apply(state, layouts, ())
    if not all(r.succeeded for r in results):
        raise RuntimeError("the mig-parted model failed a GPU")


TOOLS: tuple[tuple[str, Apply], ...] = (
    (MIGPARTED, _migparted),
    (MIGD_SEQ, _migd(False)),
    (MIGD_PAR, _migd(True)),
)


def _injected(calls: Mapping[str, Mapping[str, int]], scale: float, *, refused: bool) -> float:
    """Seconds of latency charged (their sum, not wall time) to the calls the driver
    performed (``refused`` False) or refused (True)."""
    ms = sum(
        LATENCIES_MS.get(sym, 0.0) * n
        for sym, res in calls.items()
        for result, n in res.items()
        if (result != "SUCCESS") == refused
    )
    return ms * scale / 1000


def _once(
    apply: Apply, state: str, gpus: int, before: Layout, after: Layout, scale: float
) -> dict[str, Any]:
    init_node(state, gpus)
    if before:
        apply(state, dict.fromkeys(range(gpus), before))  # set up at full speed
    set_latencies(state, {sym: ms * scale for sym, ms in LATENCIES_MS.items()})
    first = stats(state)
    started = time.monotonic()
    apply(state, dict.fromkeys(range(gpus), after))
    seconds = time.monotonic() - started
    last = stats(state)
    clear_faults(state)
    delta = {
        s: {r: n - first.get(s, {}).get(r, 0) for r, n in res.items()} for s, res in last.items()
    }
    calls: CallCounts = counts_between(first, last)
    performed = _injected(delta, scale, refused=False)
    refused = _injected(delta, scale, refused=True)
    return {
        "seconds": seconds,
        "calls": calls,
        "injected_seconds": performed + refused,
        "performed_seconds": performed,
        "refused_seconds": refused,
    }


def measure(workdir: str, *, gpus: int, repeats: int, scale: float = 1.0) -> dict[str, Any]:
    """Median wall time per tool and scenario over ``repeats`` runs, with ratios."""
    state = f"{workdir}/apply-time.json"
    scenarios = []
    for name, before, after in SCENARIOS:
        rows: dict[str, Any] = {}
        for tool, apply in TOOLS:
            runs = [_once(apply, state, gpus, before, after, scale) for _ in range(repeats)]
            runs.sort(key=lambda r: r["seconds"])
            median = runs[len(runs) // 2]
            rows[tool] = {
                "seconds": median["seconds"],
                "all_seconds": [r["seconds"] for r in runs],
                "mutating_calls": median["calls"].mutating,
                "failed_calls": median["calls"].failed,
                "injected_seconds": median["injected_seconds"],
                "performed_seconds": median["performed_seconds"],
                "refused_seconds": median["refused_seconds"],
                # What the apply would take if the driver refused a call at no cost.
                "seconds_without_refused": max(0.0, median["seconds"] - median["refused_seconds"]),
            }
        base = rows[MIGPARTED]["seconds"]
        for row in rows.values():
            row["vs_migparted"] = ratio(row["seconds"], base)
            row["speedup"] = ratio(base, row["seconds"])
            row["speedup_without_refused"] = ratio(
                rows[MIGPARTED]["seconds_without_refused"], row["seconds_without_refused"]
            )
        scenarios.append(
            {
                "name": name,
                "before": text(before),
                "after": text(after),
                "gpus": gpus,
                "tools": rows,
            }
        )
    return {
        "gpus": gpus,
        "repeats": repeats,
        "latency_scale": scale,
        "latencies_ms": {s: ms * scale for s, ms in LATENCIES_MS.items()},
        "baseline": MIGPARTED,
        "scenarios": scenarios,
    }
