"""``migd run`` as systemd sees it: a daemon process on a simulated node, a NOTIFY_SOCKET.

Readiness, the reload protocol, the watchdog, stopping; config edits however they are
made, refusals, ``migd reload``, drift, retries and ``migd status``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from daemon_support import (
    BALANCED,
    SMALL,
    Daemon,
    all_hold,
    config_text,
    destroy_one_instance,
    layouts,
    running,
    sequence_of,
    sim,
    wait_for,
    write_atomically,
)

# ---------------------------------------------------------------------------
# The notify protocol
# ---------------------------------------------------------------------------


def test_ready_only_once_every_gpu_holds_its_layout(tmp_path: Path) -> None:
    with running(tmp_path, config_text(), gpus="H200x8") as daemon:
        daemon.ready()
        # The node is already right when READY=1 arrives.
        assert layouts(daemon.state) == {i: BALANCED for i in range(8)}
        messages = daemon.notify.snapshot()
        ready_at = next(i for i, m in enumerate(messages) if "READY=1" in m)
        before = messages[:ready_at]
        statuses = [m.fields["STATUS"] for m in before if "STATUS" in m.fields]
        assert any(s.startswith("applying 1g.18gb×2+2g.35gb+3g.71gb to GPU") for s in statuses)
        assert "ready: balanced, 8/8 GPUs in sync" in statuses
        assert any("EXTEND_TIMEOUT_USEC" in m.fields for m in before)
        assert daemon.state_doc()["phase"] == "ready"


def test_sighup_reloads_with_reloading_and_monotonic_usec_in_one_datagram(
    tmp_path: Path,
) -> None:
    with running(tmp_path, config_text()) as daemon:
        daemon.ready()
        seen = len(daemon.notify.snapshot())
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        daemon.send(signal.SIGHUP)
        at, reloading = daemon.notify.wait(lambda m: "RELOADING=1" in m, "RELOADING=1", after=seen)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
        daemon.notify.wait(lambda m: "READY=1" in m, "READY=1 after the reload", after=at + 1)
        assert daemon.state_doc()["reload_generation"] == 1

        daemon.send(signal.SIGTERM)
        daemon.notify.wait(lambda m: "STOPPING=1" in m, "STOPPING=1", after=at)
        assert daemon.wait(timeout=15) == 0
        assert "exits with status 0" in daemon.log()


def _stalled(daemon: Daemon) -> None:
    """systemd too busy to read its notify socket, from before the daemon starts."""
    daemon.notify.pause()


def _phase(daemon: Daemon, phase: str, generation: int = 0) -> bool:
    doc = daemon.state_doc()
    return doc.get("phase") == phase and doc.get("reload_generation", -1) >= generation


def test_a_notify_socket_nobody_reads_never_stops_the_daemon(tmp_path: Path) -> None:
    with running(tmp_path, config_text(), prepare=_stalled) as daemon:
        # The socket is full from the start; the daemon goes on regardless.
        wait_for(lambda: _phase(daemon, "ready"), "ready, in the state file", timeout=30)
        proc = daemon.reload()
        assert proc.returncode == 0, proc.stderr
        assert "ready: balanced, 2/2 GPUs in sync" in proc.stdout
        write_atomically(daemon.config, config_text("small"))
        wait_for(lambda: all_hold(daemon.state, SMALL), "the edit applied", timeout=10)
        wait_for(lambda: _phase(daemon, "ready", 2), "the edit's outcome published")
        daemon.send(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
        assert daemon.notify.count() == 0  # systemd read nothing all along
        assert "exiting with" in daemon.log() and "systemd has not read" in daemon.log()


def test_notifications_held_for_a_stalled_reader_arrive_in_order_once_it_reads(
    tmp_path: Path,
) -> None:
    env = {"WATCHDOG_USEC": "2000000"}
    with running(tmp_path, config_text(), prepare=_stalled, env=env) as daemon:
        stalled_at = time.monotonic()
        wait_for(lambda: _phase(daemon, "ready"), "ready, in the state file", timeout=30)
        proc = daemon.reload()
        assert proc.returncode == 0, proc.stderr
        write_atomically(daemon.config, config_text("small"))
        wait_for(lambda: _phase(daemon, "ready", 2), "the edit applied", timeout=10)
        assert all_hold(daemon.state, SMALL)
        # The reader reads nothing for 20 s in all, then drains.
        time.sleep(max(0.0, stalled_at + 20 - time.monotonic()))
        assert daemon.notify.count() == 0
        assert "systemd has not read notifications for" in daemon.log()
        resumed = time.monotonic()
        daemon.notify.resume()

        daemon.ready()
        # Every READY=1 and RELOADING=1 held while systemd did not read, in order; the
        # newest status; and the watchdog pings resume.
        wait_for(
            lambda: sequence_of(
                daemon.notify.snapshot(),
                "READY=1",
                "RELOADING=1",
                "READY=1",
                "RELOADING=1",
                "READY=1",
            ),
            "READY=1, then two reloads, in order",
        )
        messages = daemon.notify.snapshot()
        reloads = [m for m in messages if "RELOADING=1" in m]
        assert len(reloads) == 2 and all("MONOTONIC_USEC" in m.fields for m in reloads)
        wait_for(
            lambda: daemon.notify.statuses()[-1] == "ready: small, 2/2 GPUs in sync",
            "the status as it is now",
        )
        wait_for(
            lambda: any("WATCHDOG=1" in m for m in daemon.notify.snapshot() if m.at > resumed),
            "a watchdog ping",
        )
        wait_for(lambda: "systemd reads notifications again" in daemon.log(), "the end logged")

        at = daemon.notify.count()
        daemon.send(signal.SIGTERM)
        daemon.notify.wait(lambda m: "STOPPING=1" in m, "STOPPING=1", after=at)
        assert daemon.wait(timeout=10) == 0


def test_watchdog_pings_and_withholds_them_while_an_nvml_call_hangs(tmp_path: Path) -> None:
    config = config_text(drift="1s")
    with running(tmp_path, config, env={"WATCHDOG_USEC": "1000000"}) as daemon:
        daemon.ready()
        first = len(daemon.notify.snapshot())
        wait_for(
            lambda: sum("WATCHDOG=1" in m for m in daemon.notify.snapshot()[first:]) >= 3,
            "three watchdog pings",
        )
        # The next drift check's first NVML call hangs for 4 s.
        hang_set = time.monotonic()
        hang = ["--call", "nvmlDeviceGetCount_v2", "--hang", "4", "--count", "1"]
        sim("fault", str(daemon.state), *hang)
        wait_for(
            lambda: "withholding watchdog pings" in daemon.log(), "the hang noticed", timeout=10
        )

        # Pings resume once the call has returned.
        def pings_after_hang() -> list[float]:
            return [m.at for m in daemon.notify.snapshot() if "WATCHDOG=1" in m and m.at > hang_set]

        wait_for(
            lambda: len(pings_after_hang()) >= 2 and max(pings_after_hang()) > hang_set + 4.5,
            "pings after the hang",
            timeout=15,
        )
        times = [hang_set, *pings_after_hang()]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Pings come every 0.5 s; while the call hung they were withheld for longer than
        # the whole watchdog interval (1 s), so systemd would have restarted migd.
        assert max(gaps) > 1.0, gaps
        assert daemon.process is not None and daemon.process.poll() is None


def test_sigterm_while_applying_lets_the_change_finish(tmp_path: Path) -> None:
    # Every GPU-instance creation takes 0.3 s: the apply is still running at SIGTERM.
    slow = ["--call", "nvmlDeviceCreateGpuInstanceWithPlacement", "--latency", "300"]
    with running(tmp_path, config_text(), gpus="H200x4", faults=[slow]) as daemon:
        daemon.notify.wait(
            lambda m: m.fields.get("STATUS", "").startswith("applying"), "an apply", timeout=30
        )
        daemon.send(signal.SIGTERM)
        daemon.notify.wait(lambda m: "STOPPING=1" in m, "STOPPING=1 at once")
        assert daemon.wait(timeout=60) == 0
        assert not any("READY=1" in m for m in daemon.notify.snapshot())
        # Never a half-built GPU: each one holds its old layout (none) or the new one.
        for index, held in layouts(daemon.state).items():
            assert held in ({}, BALANCED), (index, held)


# ---------------------------------------------------------------------------
# Config changes
# ---------------------------------------------------------------------------


def _edit_in_place(config: Path, text: str) -> None:
    with open(config, "r+") as f:
        f.truncate(0)
        f.write(text)


def _configmap(directory: Path, text: str, version: int) -> None:
    """Kubernetes' atomic writer: a new timestamped directory, ``..data`` flipped to it,
    the old one removed; ``config.yaml`` is a symlink through ``..data``."""
    data = directory / f"..2024_01_01_00_00_0{version}.000000000"
    data.mkdir()
    (data / "config.yaml").write_text(text)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    tmp = directory / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, directory / "..data")
    if old is not None:
        shutil.rmtree(directory / old)
    if not (directory / "config.yaml").is_symlink():
        (directory / "config.yaml").unlink(missing_ok=True)
        (directory / "config.yaml").symlink_to("..data/config.yaml")


@pytest.mark.parametrize("how", ["in-place", "atomic-rename", "configmap"])
def test_config_edits_are_applied_within_five_seconds(tmp_path: Path, how: str) -> None:
    def as_configmap(daemon: Daemon) -> None:
        _configmap(daemon.directory, config_text(), 1)

    prepare = as_configmap if how == "configmap" else None
    with running(tmp_path, config_text(), prepare=prepare) as daemon:
        daemon.ready()
        seen = len(daemon.notify.snapshot())
        if how == "in-place":
            _edit_in_place(daemon.config, config_text("small"))
        elif how == "atomic-rename":
            write_atomically(daemon.config, config_text("small"))
        else:
            _configmap(daemon.directory, config_text("small"), 2)
        at, _ = daemon.notify.wait(lambda m: "RELOADING=1" in m, "RELOADING=1", after=seen)
        daemon.notify.wait(lambda m: "READY=1" in m, "READY=1 after it", after=at + 1)
        wait_for(lambda: all_hold(daemon.state, SMALL), "the new layout", timeout=5)
        assert daemon.state_doc()["selected_config"] == "small"


def test_invalid_edit_is_refused_and_migd_reload_says_why(tmp_path: Path) -> None:
    with running(tmp_path, config_text()) as daemon:
        daemon.ready()
        # Rewriting the same content is no change.
        write_atomically(daemon.config, config_text())
        time.sleep(1.0)
        assert daemon.state_doc()["reload_generation"] == 0

        bad = config_text("small").replace('"1g.18gb": 7', '"1g.18gb": seven')
        line = next(i for i, text in enumerate(bad.splitlines(), 1) if "seven" in text)
        write_atomically(daemon.config, bad)
        doc = wait_for(
            lambda: (d := daemon.state_doc()) and not d["last_reload_ok"] and d,
            "the refusal published",
        )
        where = f"{daemon.config}:{line}:"
        assert where in doc["last_reload_error"]
        assert doc["selected_config"] == "balanced" and doc["phase"] == "degraded"
        # The state file and STATUS= are two observers of one view: wait for the second.
        status = wait_for(
            lambda: (
                (s := daemon.notify.statuses()[-1]).startswith("degraded: config refused") and s
            ),
            "the refusal in STATUS=",
        )
        assert status.startswith("degraded: config refused, keeping balanced:"), status
        assert where in status
        assert all_hold(daemon.state, BALANCED)  # nothing touched

        # `migd reload` fails on the same file the watcher had already refused.
        proc = daemon.reload()
        assert proc.returncode == 2, proc
        assert where in proc.stderr and "seven" in proc.stderr
        assert daemon.process is not None and daemon.process.poll() is None
        assert all_hold(daemon.state, BALANCED)

        _edit_in_place(daemon.config, config_text("small"))
        proc = daemon.reload()
        assert proc.returncode == 0, proc.stderr
        assert all_hold(daemon.state, SMALL)
        doc = daemon.state_doc()
        assert doc["last_reload_ok"] and doc["phase"] == "ready"


def test_an_edit_is_applied_while_other_files_beside_the_config_keep_changing(
    tmp_path: Path,
) -> None:
    """A log or a lock file written beside the config every 50 ms (more often than the
    debounce) must not put the edit off for ever."""
    with running(tmp_path, config_text()) as daemon:
        daemon.ready()
        done = threading.Event()

        def scribble() -> None:
            for n in itertools.count():
                if done.wait(0.05) or n > 400:
                    return
                (daemon.directory / "busy.log").write_text(f"{n}\n")

        writer = threading.Thread(target=scribble, daemon=True)
        writer.start()
        try:
            write_atomically(daemon.config, config_text("small"))
            wait_for(lambda: all_hold(daemon.state, SMALL), "the edit applied", timeout=10)
        finally:
            done.set()
            writer.join(timeout=5)


def test_invalid_config_at_start_continue_reports_ready_and_touches_nothing(
    tmp_path: Path,
) -> None:
    bad = config_text().replace("selected-config: balanced", "selected-config: nosuch")
    with running(tmp_path, bad) as daemon:
        daemon.ready()
        status = daemon.notify.statuses()[-1]
        assert status.startswith("degraded: config invalid, no GPU touched:"), status
        assert str(daemon.config) in status and "nosuch" in status
        assert all(held == {} for held in layouts(daemon.state).values())
        assert (
            json.loads(sim("show", str(daemon.state), "--json"))["gpus"][0]["mig"]["current"] == 0
        )
        # Fixing the file is enough: the watcher picks it up.
        write_atomically(daemon.config, config_text())
        wait_for(lambda: all_hold(daemon.state, BALANCED), "the fixed config applied")


def test_invalid_config_at_start_strict_exits_2(tmp_path: Path) -> None:
    bad = config_text().replace('"3g.71gb": 1', '"3g.71gb": one')
    with running(tmp_path, bad, "--boot-policy", "strict") as daemon:
        assert daemon.wait(timeout=30) == 2
        assert not any("READY=1" in m for m in daemon.notify.snapshot())
        assert all(held == {} for held in layouts(daemon.state).values())
        assert "one" in daemon.log()


# ---------------------------------------------------------------------------
# Drift and retries
# ---------------------------------------------------------------------------


def test_drift_is_repaired(tmp_path: Path) -> None:
    with running(tmp_path, config_text(drift="1s")) as daemon:
        daemon.ready()
        # No look at the node in between: the 1 s drift check may repair it first.
        destroy_one_instance(daemon.state, 1)
        wait_for(lambda: all_hold(daemon.state, BALANCED), "the drift repaired", timeout=6)
        assert "drift: GPU 1 holds" in daemon.log()


def test_a_stop_during_a_drift_check_leaves_the_drift_unrepaired(tmp_path: Path) -> None:
    with running(tmp_path, config_text(drift="1s")) as daemon:
        daemon.ready()
        # A drift check reads GPU 0, then GPU 1 (once each: nobody else reads GPU 1).
        # The next check's read of GPU 1 hangs 8 s, the one after that 3 s.
        mig_mode = ["--call", "nvmlDeviceGetMigMode", "--gpu", "1"]
        sim("fault", str(daemon.state), *mig_mode, "--hang", "8")
        sim("fault", str(daemon.state), *mig_mode, "--hang", "3", "--after", "1", "--count", "1")

        def reads_of_gpu_1() -> int:
            # The second fault counts every read, from its start (the first stops at one).
            doc = json.loads(sim("show", str(daemon.state), "--json"))
            return doc["faults"]["calls"][1]["seen"]

        wait_for(lambda: reads_of_gpu_1() == 1, "a drift check held in GPU 1", timeout=10)
        # Drift, behind that check: the one after it finds it, and is held in turn.
        destroy_one_instance(daemon.state, 0)
        wait_for(lambda: reads_of_gpu_1() == 2, "the next drift check held in GPU 1", timeout=15)
        daemon.send(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        stop = daemon.log().index("SIGTERM: stopping once the job in progress has finished")
        after_stop = daemon.log()[stop:]
        assert "drift: GPU 0 holds" in after_stop  # the check in flight found the drift
        assert layouts(daemon.state)[0] != BALANCED  # and nothing repaired it
        assert "stopping: the drift reconcile of balanced is not started" in after_stop


def test_drift_is_only_reported_under_policy_report(tmp_path: Path) -> None:
    with running(tmp_path, config_text(drift="1s", policy="report")) as daemon:
        daemon.ready()
        destroy_one_instance(daemon.state, 0)
        doc = wait_for(
            lambda: (d := daemon.state_doc()) and not d["gpus"][0]["in_sync"] and d,
            "the drift reported",
        )
        assert doc["gpus"][0]["reason"].startswith("drifted: holds")
        assert "GPU 0" in doc["status"] and doc["phase"] == "degraded"
        time.sleep(1.5)  # another drift check, which must not repair either
        assert layouts(daemon.state)[0] != BALANCED


def test_failed_reconcile_is_retried_with_backoff_until_it_succeeds(tmp_path: Path) -> None:
    # GPU 0's first two GPU-instance creations fail: the start and the first retry.
    fault = [
        "--call", "nvmlDeviceCreateGpuInstanceWithPlacement",
        "--code", "INSUFFICIENT_RESOURCES", "--gpu", "0", "--count", "2",
    ]  # fmt: skip
    with running(tmp_path, config_text(), faults=[fault]) as daemon:
        daemon.ready()  # boot-policy continue: ready, degraded
        wait_for(lambda: all_hold(daemon.state, BALANCED), "the retries succeeding", timeout=10)
        statuses = daemon.notify.statuses()
        failed = [s for s in statuses if s.startswith("degraded: GPU 0 failed")]
        assert any(s.endswith("retry in 1 s)") for s in failed), failed
        assert any(s.endswith("retry in 2 s)") for s in failed), failed
        wait_for(
            lambda: daemon.notify.statuses()[-1] == "ready: balanced, 2/2 GPUs in sync",
            "ready again",
        )
        assert daemon.log().count("retrying balanced") == 2


# ---------------------------------------------------------------------------
# migd status, and a GPU blocked by a running process
# ---------------------------------------------------------------------------


def test_status_shows_each_gpu_and_a_blocked_one(tmp_path: Path) -> None:
    # No retry within the test: the status it reads twice must be the same one.
    no_retry = {"retry_initial": "10m", "retry_max": "10m"}
    with running(tmp_path, config_text(**no_retry)) as daemon:
        daemon.ready()
        proc = daemon.status("--json")
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["running"] and doc["phase"] == "ready"
        assert [(g["index"], g["in_sync"], g["desired"]) for g in doc["gpus"]] == [
            (0, True, "1g.18gb×2+2g.35gb+3g.71gb"),
            (1, True, "1g.18gb×2+2g.35gb+3g.71gb"),
        ]
        gi = json.loads(sim("show", str(daemon.state), "--json"))["gpus"][1]["gpu_instances"][0]
        sim(
            "process",
            str(daemon.state),
            "add",
            "--gpu",
            "1",
            "--gi",
            str(gi["id"]),
            "--pid",
            "4242",
        )

        _edit_in_place(daemon.config, config_text("small", **no_retry))
        proc = daemon.reload()
        assert proc.returncode == 3, proc  # blocked by running processes
        assert "4242" in proc.stderr
        doc = json.loads(daemon.status("--json").stdout)
        gpu0, gpu1 = doc["gpus"]
        assert gpu0["in_sync"] and gpu0["desired"] == gpu0["current"] == "1g.18gb×7"
        assert not gpu1["in_sync"] and gpu1["outcome"] == "blocked" and "4242" in gpu1["reason"]
        assert doc["status"].startswith("degraded: GPU 1 blocked:") and "4242" in doc["status"]
        assert daemon.notify.statuses()[-1] == doc["status"]
        text = daemon.status()
        assert text.returncode == 1
        assert "GPU 1   blocked" in text.stdout and "4242" in text.stdout

    # A stopped daemon: its last state, and no claim that it runs.
    proc = daemon.status("--json")
    assert proc.returncode == 1 and not json.loads(proc.stdout)["running"]
    assert "no migd daemon runs" in daemon.reload().stderr
