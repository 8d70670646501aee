"""The daemon's life in one test: start, READY, an edit applied, a reload, a clean stop.

It is marked ``smoke`` because .ci/run runs it a second time in a virtual environment
holding every runtime dependency at the minimum pyproject.toml declares (see
.ci/minimum-pins): one ``migd run`` on a simulated node uses each of them — the
config (PyYAML), the GPUs through pynvml (nvidia-ml-py), the file watcher (watchdog)
and the metrics endpoint (prometheus-client).
"""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from daemon_support import (
    BALANCED,
    SMALL,
    all_hold,
    config_text,
    free_port,
    running,
    sim,
    wait_for,
    write_atomically,
)

pytestmark = pytest.mark.smoke

DEADLINE = 30.0  # liveness only


def gpu_instances(state: Path, gpu: int) -> list[dict[str, Any]]:
    """The GPU instances of one simulated GPU, as ``migd sim show --json`` lists them."""
    instances = json.loads(sim("show", str(state), "--json"))["gpus"][gpu]["gpu_instances"]
    return [{k: gi[k] for k in ("id", "profile", "placement")} for gi in instances]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=DEADLINE) as reply:
        return reply.read().decode()


def test_the_daemon_starts_applies_an_edit_reloads_and_stops(tmp_path: Path) -> None:
    port = free_port()
    with running(tmp_path, config_text(), "--metrics-address", f"127.0.0.1:{port}") as daemon:
        daemon.ready(timeout=DEADLINE)
        assert all_hold(daemon.state, BALANCED)
        assert "migd_ready 1.0" in scrape(port).splitlines()

        # A process runs in a 1g.18gb instance; the new layout can keep that instance.
        busy = next(gi for gi in gpu_instances(daemon.state, 0) if gi["profile"] == "1g.18gb")
        sim(
            "process",
            str(daemon.state),
            "add",
            "--gpu",
            "0",
            "--gi",
            str(busy["id"]),
            "--pid",
            "4242",
        )

        # An editor's save, seen by the file watcher, is applied around the busy instance.
        write_atomically(daemon.config, config_text("small"))
        wait_for(lambda: all_hold(daemon.state, SMALL), "the edit applied", timeout=DEADLINE)
        assert busy in gpu_instances(daemon.state, 0)
        wait_for(
            lambda: 'migd_mig_devices{gpu="0",profile="1g.18gb"} 7.0' in scrape(port),
            "the metrics showing the edit",
            timeout=DEADLINE,
        )

        # `migd reload` (what `systemctl reload migd` runs) is answered, and systemd hears
        # RELOADING=1 and then READY=1.
        seen = len(daemon.notify.snapshot())
        reloaded = daemon.reload()
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        at, _ = daemon.notify.wait(lambda m: "RELOADING=1" in m, "RELOADING=1", after=seen)
        daemon.notify.wait(lambda m: "READY=1" in m, "READY=1 after the reload", after=at + 1)
        assert all_hold(daemon.state, SMALL)

        daemon.send(signal.SIGTERM)
        daemon.notify.wait(lambda m: "STOPPING=1" in m, "STOPPING=1", after=at)
        assert daemon.wait(timeout=DEADLINE) == 0
