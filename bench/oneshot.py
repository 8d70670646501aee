"""One-shot verbs: ``migd export``, ``assert`` and ``plan`` against a bare pynvml process.

A one-shot verb is a process: it starts Python, loads what the verb needs, reads the
node through NVML, prints and exits. The node: eight simulated H200s holding the
balanced layout. Each verb runs as ``migd --simulate STATE VERB``; both baselines run
``python -c`` with pynvml, activate the same simulator the same way and call
``nvmlInit()``:

- "bare reader": then, for every GPU, its handle, UUID and MIG mode, and
  ``nvmlShutdown()``: the least a tool that reports on the GPUs reads;
- "bare init": ``nvmlInit()`` and ``nvmlShutdown()`` only.

Every command runs once untimed first (so each has its bytecode compiled, as an
installed package has), then all run in turn, ``runs`` times each; wall time is from
the start of the process to its exit, memory its peak RSS (``ru_maxrss`` of the
child).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from bench.daemon import MIGD, clean_environ, write_atomically
from bench.layouts import BALANCED, counts, text
from bench.simnode import init_node
from bench.stats import ratio, summary
from bench.tools import migd_apply

BARE_READER = r"""
import sys
import pynvml
from migd import sim
sim.activate(sys.argv[1])
pynvml.nvmlInit()
for i in range(pynvml.nvmlDeviceGetCount()):
    handle = pynvml.nvmlDeviceGetHandleByIndex(i)
    pynvml.nvmlDeviceGetUUID(handle)
    pynvml.nvmlDeviceGetMigMode(handle)
pynvml.nvmlShutdown()
"""

BARE_INIT = r"""
import sys
import pynvml
from migd import sim
sim.activate(sys.argv[1])
pynvml.nvmlInit()
pynvml.nvmlShutdown()
"""

BASELINE = "bare reader"
VERBS = ("export", "assert", "plan")


# Starts one command and reports its wall time, peak RSS and exit code. A child's peak
# RSS counts the pages of the process it was forked from until it execs, so the
# benchmark (tens of MiB) does not start the commands itself: this small launcher does.
LAUNCHER = r"""
import os, sys, time
quiet = [
    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
]
started = time.monotonic()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=quiet)
_, status, usage = os.wait4(pid, 0)
print(time.monotonic() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def _timed(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run of ``argv``; it must exit 0."""
    out = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *argv],
        env=clean_environ(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    seconds, kib, code = float(out[0]), int(out[1]), int(out[2])
    if code != 0:
        raise RuntimeError(f"{argv} exited {code}")
    return seconds, kib


def measure(workdir: str, *, runs: int, gpus: int = 8) -> dict[str, Any]:
    directory = os.path.join(workdir, "oneshot")
    os.makedirs(directory, exist_ok=True)
    state = os.path.join(directory, "node.json")
    config = os.path.join(directory, "config.yaml")
    init_node(state, gpus)
    migd_apply(state, dict.fromkeys(range(gpus), BALANCED))
    devices = ", ".join(f'"{n}": {c}' for n, c in counts(BALANCED).items())
    write_atomically(
        config,
        "version: v1\nmig-configs:\n  balanced:\n    - devices: all\n      mig-enabled: true\n"
        f"      mig-devices: {{{devices}}}\n",
    )
    commands = {
        BASELINE: [sys.executable, "-c", BARE_READER, state],
        "bare init": [sys.executable, "-c", BARE_INIT, state],
        "export": [*MIGD, "--simulate", state, "export"],
        # The node holds the layout: assert says so and plan has nothing to do (exit 0).
        "assert": [*MIGD, "--simulate", state, "assert", "-f", config],
        "plan": [*MIGD, "--simulate", state, "plan", "-f", config],
    }
    for argv in commands.values():
        _timed(argv)  # untimed: compiles and caches the bytecode
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            samples[name].append(_timed(argv))
    rows: dict[str, Any] = {}
    for name, got in samples.items():
        rows[name] = {
            "seconds": summary([s for s, _ in got]),
            "peak_rss_kib": summary([float(k) for _, k in got]),
        }
    for row in rows.values():
        for base, key in ((BASELINE, "vs_reader"), ("bare init", "vs_init")):
            row[key] = {
                "seconds_p50": ratio(row["seconds"]["p50"], rows[base]["seconds"]["p50"]),
                "peak_rss_p50": ratio(
                    row["peak_rss_kib"]["p50"], rows[base]["peak_rss_kib"]["p50"]
                ),
            }
    return {
        "gpus": gpus,
        "layout": text(BALANCED),
        "runs": runs,
        "baseline": BASELINE,
        "rows": rows,
    }
