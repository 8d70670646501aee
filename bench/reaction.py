"""Reaction: how fast a running daemon takes up a config edit and a ``migd reload``.

A daemon runs on a small simulated node (two H200s) with metrics off. The config
file is saved the way an editor saves (a temporary file renamed over it), switching
the selected layout each time, so every edit is a real change that the daemon
reconciles.

- file saved -> reconcile started: from the rename to the ``MONOTONIC_USEC=`` of the
  daemon's ``RELOADING=1`` (sent when it takes the reload up, before reading the
  file); and -> reconciled: to the ``READY=1`` that follows. Baseline: a bare
  watchdog observer on the same kind of directory, in its own process, reporting the
  rename of the file over the same kind of socket — the cost of noticing at all.
  migd waits ``migd.daemon.loop.DEBOUNCE_SECONDS`` (0.2 s) on purpose, so that the several
  events of one save make one reconcile.
- ``migd reload`` round trip: save an edit, then run ``migd reload`` and time that
  process from start to exit (it returns once the daemon has applied a reading of
  the file made after the request). Baseline: ``migd --version``, the same
  interpreter and CLI start doing nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from bench.daemon import (
    NotifyListener,
    clean_environ,
    daemon_config,
    run_migd,
    running,
    write_atomically,
)
from bench.layouts import BALANCED, Layout, text
from bench.simnode import init_node
from bench.stats import ratio, summary
from migd.daemon.loop import DEBOUNCE_SECONDS

# The two layouts the edits switch between: the 2g of the balanced layout split in two.
LAYOUTS: dict[str, Layout] = {"a": BALANCED, "b": ("1g.18gb",) * 4 + ("3g.71gb",)}

BARE_WATCHER = r"""
import os, socket, sys, time
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

path, address = sys.argv[1], "\0" + sys.argv[2][1:]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

class Report(FileSystemEventHandler):
    def on_any_event(self, event):
        if path in (event.src_path, getattr(event, "dest_path", "")):
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            sock.sendto(f"EVENT=1\nMONOTONIC_USEC={usec}".encode(), address)

observer = Observer()
observer.schedule(Report(), os.path.dirname(path), recursive=False)
observer.start()
sock.sendto(b"READY=1", address)
while True:
    time.sleep(3600)
"""


def _usec(fields: dict[str, str] | Any) -> float:
    return int(fields["MONOTONIC_USEC"]) / 1_000_000


def _bare_watcher(directory: str, edits: int) -> list[float]:
    """Seconds from each save to a bare watchdog observer seeing the file replaced."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "config.yaml")
    write_atomically(path, "a\n")
    listener = NotifyListener()
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_WATCHER, path, listener.address],
        stdin=subprocess.DEVNULL,
        env=clean_environ(),
    )
    samples = []
    try:
        listener.wait(lambda m: m.has("READY=1"), "watcher READY=1", timeout=30)
        for i in range(edits):
            mark = listener.count()
            saved = write_atomically(path, f"{i}\n")
            _, msg = listener.wait(lambda m: m.has("EVENT=1"), "event", after=mark, timeout=30)
            samples.append(_usec(msg.fields) - saved)
            time.sleep(0.05)  # let the save's other events go by
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        listener.close()
    return samples


def measure(workdir: str, *, edits: int, gpus: int = 2) -> dict[str, Any]:
    directory = os.path.join(workdir, "reaction")
    os.makedirs(directory, exist_ok=True)
    state = os.path.join(directory, "node.json")
    config = os.path.join(directory, "config.yaml")
    init_node(state, gpus)
    names = list(LAYOUTS)
    current = 0
    write_atomically(config, daemon_config(names[current], LAYOUTS))
    started: list[float] = []
    reconciled: list[float] = []
    reloads: list[float] = []
    with running(directory, state, config) as daemon:
        daemon.ready()
        notify = daemon.notify
        for _ in range(edits):
            current = 1 - current  # every save is a real change
            mark = notify.count()
            saved = write_atomically(config, daemon_config(names[current], LAYOUTS))
            pos, msg = notify.wait(lambda m: m.has("RELOADING=1"), "RELOADING=1", after=mark)
            started.append(_usec(msg.fields) - saved)
            _, ready = notify.wait(lambda m: m.has("READY=1"), "READY=1", after=pos)
            reconciled.append(ready.at - saved)
        for _ in range(edits):
            current = 1 - current
            write_atomically(config, daemon_config(names[current], LAYOUTS))
            _, seconds = run_migd("reload", "--runtime-dir", daemon.runtime)
            reloads.append(seconds)
    bare = _bare_watcher(os.path.join(workdir, "bare-watch"), edits)
    versions = [run_migd("--version")[1] for _ in range(edits)]
    file_started = summary(started)
    # What remains once the deliberate debounce is taken out: migd's own reaction time.
    own = summary([s - DEBOUNCE_SECONDS for s in started])
    bare_summary = summary(bare)
    reload_summary = summary(reloads)
    version_summary = summary(versions)
    return {
        "gpus": gpus,
        "edits": edits,
        "layouts": {k: text(v) for k, v in LAYOUTS.items()},
        "file_to_reconcile_started": file_started,
        "file_to_reconcile_started_minus_debounce": own,
        "debounce_seconds": DEBOUNCE_SECONDS,
        "file_to_reconciled": summary(reconciled),
        "bare_watcher": bare_summary,
        "reload_round_trip": reload_summary,
        "migd_version_round_trip": version_summary,
        "ratios": {
            "started_vs_bare_p50": ratio(file_started["p50"], bare_summary["p50"]),
            "started_vs_bare_p99": ratio(file_started["p99"], bare_summary["p99"]),
            "own_vs_bare_p50": ratio(own["p50"], bare_summary["p50"]),
            "reload_vs_version_p50": ratio(reload_summary["p50"], version_summary["p50"]),
            "reload_vs_version_p99": ratio(reload_summary["p99"], version_summary["p99"]),
        },
    }
