"""Footprint: start to READY on a node that is already right, idle CPU, memory.

The node: eight simulated H200s already holding the balanced layout, so the
daemon's first reconcile is a no-op (a reboot-free restart of migd, or a boot after
something else laid the GPUs out). The daemon serves metrics (on a free port) and
checks for drift every 20 s — more often than the 60 s default, so the idle window
includes periodic NVML scans.

Both run with Python free to keep compiled bytecode (and once untimed first), as an
installed migd runs. Baseline: a bare process that imports pynvml, activates the same simulator,
calls ``nvmlInit()``, says ``READY=1`` on the same kind of socket and sleeps — the
least any NVML-holding Python daemon costs. Both are started alternately (never
together, so neither slows the other's start), then both idle side by side over the
same window; CPU time comes from ``/proc/PID/stat`` (user + system, every thread),
memory from ``/proc/PID/status`` (VmRSS, VmHWM).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from bench.daemon import (
    DaemonProcess,
    NotifyListener,
    clean_environ,
    daemon_config,
    free_port,
    write_atomically,
)
from bench.layouts import BALANCED, text
from bench.simnode import init_node
from bench.stats import ratio, summary
from bench.tools import migd_apply

BASELINE = r"""
import socket, sys, time
import pynvml
from migd import sim
sim.activate(sys.argv[1])
pynvml.nvmlInit()
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto(b"READY=1", "\0" + sys.argv[2][1:])
while True:
    time.sleep(3600)
"""

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, every thread included."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    found = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


class _Baseline:
    def __init__(self, state: str) -> None:
        self.listener = NotifyListener()
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-c", BASELINE, state, self.listener.address],
            stdin=subprocess.DEVNULL,
            env=clean_environ(),
        )

    def ready(self) -> float:
        _, msg = self.listener.wait(lambda m: m.has("READY=1"), "baseline READY=1")
        return msg.at - self.started_at

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.listener.close()


def measure(workdir: str, *, starts: int, idle_seconds: float, gpus: int = 8) -> dict[str, Any]:
    directory = os.path.join(workdir, "footprint")
    os.makedirs(directory, exist_ok=True)
    state = os.path.join(directory, "node.json")
    config = os.path.join(directory, "config.yaml")
    init_node(state, gpus)
    migd_apply(state, dict.fromkeys(range(gpus), BALANCED))  # already right: a no-op start
    write_atomically(
        config,
        daemon_config(
            "balanced", {"balanced": BALANCED}, metrics=f"127.0.0.1:{free_port()}", drift="20s"
        ),
    )
    migd_ready: list[float] = []
    base_ready: list[float] = []
    daemon: DaemonProcess | None = None
    baseline: _Baseline | None = None
    try:
        # Once untimed: both have their bytecode compiled, as an installed package has.
        warm = _Baseline(state)
        warm.ready()
        warm.stop()
        warm_daemon = DaemonProcess(directory, state, config).start()
        warm_daemon.ready()
        warm_daemon.stop()
        for i in range(starts):
            last = i == starts - 1
            baseline = _Baseline(state)
            base_ready.append(baseline.ready())
            if not last:
                baseline.stop()
            daemon = DaemonProcess(directory, state, config).start()
            migd_ready.append(daemon.ready().at - daemon.started_at)
            if not last:
                daemon.stop()
        assert daemon is not None and baseline is not None
        time.sleep(1.0)  # let both settle after their start
        pids = {"migd": daemon.pid, "baseline": baseline.process.pid}
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        time.sleep(idle_seconds)
        cpu = {k: cpu_seconds(p) - before[k] for k, p in pids.items()}
        memory = {k: memory_kib(p) for k, p in pids.items()}
    finally:
        if daemon is not None:
            daemon.stop()
        if baseline is not None:
            baseline.stop()
    ready = summary(migd_ready)
    base = summary(base_ready)
    return {
        "gpus": gpus,
        "layout": text(BALANCED),
        "starts": starts,
        "idle_seconds": idle_seconds,
        "start_to_ready": {
            "migd": ready,
            "baseline": base,
            "ratio_p50": ratio(ready["p50"], base["p50"]),
        },
        "idle_cpu_seconds": {
            **cpu,
            "migd_percent_of_one_core": 100 * cpu["migd"] / idle_seconds,
            "ratio": ratio(cpu["migd"], cpu["baseline"]),
        },
        "memory_kib": {
            **memory,
            "rss_ratio": ratio(memory["migd"]["VmRSS"], memory["baseline"]["VmRSS"]),
            "peak_ratio": ratio(memory["migd"]["VmHWM"], memory["baseline"]["VmHWM"]),
        },
    }
