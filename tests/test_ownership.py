"""One owner per node: the daemon and one-shot verbs never fight, and neither do two controllers.

Real processes on a simulated node: ``migd run`` beside ``migd apply``/``restore``, two
``migd apply`` at once, and a stand-in for another MIG controller that keeps
destroying instances through NVML (``migd.node.lock``, the loop's contested GPUs).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from daemon_support import (
    BALANCED,
    MIGD,
    SMALL,
    all_hold,
    clean_environ,
    config_text,
    destroy_one_instance,
    layouts,
    migd,
    running,
    sim,
    wait_for,
)
from geometry_support import mutating_calls, stats

from migd.node.lock import NodeLock

# The first instance creation hangs for a while: the change that makes it holds the
# node lock long enough for another process to start and find it held.
HANG = ("--call", "nvmlDeviceCreateGpuInstanceWithPlacement", "--hang", "2.5")


def node_lock(state: Path) -> NodeLock:
    return NodeLock(Path(f"{state}.node.lock"))


def gi_ids(state: Path, gpu: int) -> list[tuple[int, str]]:
    doc = json.loads(sim("show", str(state), "--json"))
    return sorted((gi["id"], gi["profile"]) for gi in doc["gpus"][gpu]["gpu_instances"])


def test_a_one_shot_change_is_refused_while_the_daemon_runs(tmp_path: Path) -> None:
    with running(tmp_path, config_text()) as daemon:
        daemon.ready()
        state = str(daemon.state)
        assert (
            migd("--simulate", state, "checkpoint", "-f", str(tmp_path / "cp.json")).returncode == 0
        )
        held, calls = layouts(daemon.state), mutating_calls(stats(daemon.state))

        applied = migd("--simulate", state, "apply", "-f", str(daemon.config), "-c", "small")
        restored = migd("--simulate", state, "restore", "-f", str(tmp_path / "cp.json"))
        for refused in (applied, restored):
            assert refused.returncode == 5, refused.stderr
            assert f"migd daemon (pid {daemon.pid}) owns this node" in refused.stderr
            assert f"edit {daemon.config} and run 'systemctl reload migd'" in refused.stderr
            assert "--override-daemon (or --force)" in refused.stderr
        # Nothing touched: not one mutating NVML call, from anyone.
        assert layouts(daemon.state) == held
        assert mutating_calls(stats(daemon.state)) == calls

        # Read-only verbs never wait, even while a change holds the node lock.
        with node_lock(daemon.state).hold("a test", timeout=1):
            planned = migd("--simulate", state, "plan", "-f", str(daemon.config), "-c", "small")
            asserted = migd("--simulate", state, "assert", "-f", str(daemon.config))
        assert planned.returncode == 0, planned.stderr
        assert asserted.returncode == 0, asserted.stderr


# --force (destroy busy instances) is the operator's explicit word too: it overrides the
# daemon as --override-daemon does.
@pytest.mark.parametrize("override", ["--override-daemon", "--force"])
def test_override_waits_for_the_daemons_change_and_the_daemon_looks_at_once(
    tmp_path: Path, override: str
) -> None:
    # No drift checks: only the one-shot's word can make the daemon look at the GPUs.
    # Policy report, so what the daemon found stays to be seen.
    config = config_text(drift="0", policy="report")
    with running(tmp_path, config, faults=[HANG]) as daemon:
        daemon.notify.wait(
            lambda m: m.fields.get("STATUS", "").startswith("applying"), "the daemon applying"
        )
        forced = migd(
            "--simulate",
            str(daemon.state),
            "apply",
            "-f",
            str(daemon.config),
            "-c",
            "small",
            override,
        )
        assert forced.returncode == 0, forced.stderr
        # It waited for the daemon's startup change, and applied after it.
        assert f"held by pid {daemon.pid} (migd run)" in forced.stdout
        assert all_hold(daemon.state, SMALL)
        assert f"told migd daemon (pid {daemon.pid}) to check the GPUs now" in forced.stdout

        def seen() -> bool:
            gpus = daemon.state_doc().get("gpus", [])
            return len(gpus) == 2 and all(g["reason"].startswith("drifted:") for g in gpus)

        wait_for(seen, "the daemon's status showing the change", timeout=5)
        assert "SIGUSR1: checking the GPUs now" in daemon.log()
        assert "drift: GPU 1 holds 1g.18gb×7" in daemon.log()
        assert "3g.71gb at 4:4) disappeared" in daemon.log()


def test_two_one_shot_applies_run_one_after_the_other(tmp_path: Path) -> None:
    state = tmp_path / "node.json"
    sim("init", str(state), "--gpu", "H200x2")
    sim("fault", str(state), *HANG)
    config = tmp_path / "config.yaml"
    config.write_text(config_text())
    first = subprocess.Popen(
        [*MIGD, "--simulate", str(state), "apply", "-f", str(config), "-c", "balanced"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environ(),
    )
    try:
        lock = node_lock(state)
        wait_for(lambda: lock.holder().startswith(f"pid {first.pid}"), "the first apply's lock")
        impatient = migd(
            "--simulate", str(state), "apply", "-f", str(config), "-c", "small",
            "--lock-timeout", "0.2",
        )  # fmt: skip
        assert impatient.returncode == 5, impatient.stderr
        assert f"held by pid {first.pid} (migd apply)" in impatient.stderr
        assert "nothing was touched" in impatient.stderr
        second = migd("--simulate", str(state), "apply", "-f", str(config), "-c", "small")
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert f"waiting for the node lock {lock.path}, held by pid {first.pid}" in second.stdout
    # One after the other: the first one's layout completed, then the second one's.
    assert out.count("applied 1g.18gb×2+2g.35gb+3g.71gb") == 2
    assert all_hold(state, SMALL)


CONTESTED_CONFIG = """\
version: v1
selected-config: balanced
settings:
  metrics:
    address: null
  drift-check:
    interval: 0.3s
    max-repairs: 2
    window: 1m
  nfd:
    path: {nfd}
mig-configs:
  balanced:
    - devices: all
      mig-enabled: true
      mig-devices: {{"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1}}
"""


def test_a_gpu_another_controller_keeps_changing_becomes_contested(tmp_path: Path) -> None:
    nfd = tmp_path / "features.d" / "migd"
    with running(tmp_path / "node", CONTESTED_CONFIG.format(nfd=nfd)) as daemon:
        daemon.ready()
        gpu0 = gi_ids(daemon.state, 0)

        def contested() -> bool:
            gpus = daemon.state_doc().get("gpus", [])
            return any(g["index"] == 1 and g.get("contested") for g in gpus)

        # Another controller destroys an instance on GPU 1 every half second.
        done = threading.Event()

        def foreign_controller() -> None:
            while not done.is_set() and not contested():
                # GPU 1 may be empty just now: nothing to destroy, then.
                with contextlib.suppress(AssertionError, ValueError):
                    destroy_one_instance(daemon.state, 1)
                done.wait(0.5)

        thread = threading.Thread(target=foreign_controller, daemon=True)
        thread.start()
        try:
            wait_for(contested, "GPU 1 contested", timeout=20)
        finally:
            done.set()
            thread.join(timeout=30)

        # Once the reconcile that follows (GPU 0 only: it writes the labels) is done.
        doc = wait_for(
            lambda: (d := daemon.state_doc()).get("phase") == "degraded" and d,
            "the daemon degraded, not applying",
        )
        gpu = {g["index"]: g for g in doc["gpus"]}
        assert gpu[1]["outcome"] == "contested" and not gpu[1]["in_sync"]
        assert "drifted again after 2 repairs within 60 s" in gpu[1]["reason"]
        assert doc["phase"] == "degraded" and "GPU 1 contested" in doc["status"]
        log = daemon.log()
        assert "GPU 1 contested: drifted again after 2 repairs" in log
        assert "disappeared" in log
        # The other GPU is unaffected: in sync, its instances the very ones it had.
        assert gpu[0]["in_sync"] and gi_ids(daemon.state, 0) == gpu0
        labels = wait_for(
            lambda: "migd/contested-gpus=1\n" in nfd.read_text() and nfd.read_text(),
            "the contested label",
        )
        assert "nvidia.com/mig.config.state=failed\n" in labels
        assert daemon.status().returncode == 1

        # Left alone: later checks do not repair it.
        held = layouts(daemon.state)[1]
        time.sleep(1.0)
        assert layouts(daemon.state)[1] == held != BALANCED

        # A reload is the operator's word: GPU 1 is repaired again.
        reloaded = daemon.reload()
        assert reloaded.returncode == 0, reloaded.stderr
        assert all_hold(daemon.state, BALANCED)
        assert not any(g["contested"] for g in daemon.state_doc()["gpus"])
        assert "migd/contested-gpus" not in nfd.read_text()
