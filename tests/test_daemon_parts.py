"""The daemon's parts without a daemon process: sd_notify, the runtime directory, the
unit file, and the loop's decisions driven in-process over fake GPUs."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from daemon_support import NotifyListener, config_text, wait_for
from geometry_support import A100, make_node, scratch_dir
from geometry_support import config_text as geometry_config
from process_support import ended

from migd.core.gpu_models import blank_gpu
from migd.core.layout import DesiredGpu, NodeSnapshot
from migd.daemon.loop import (
    ConfigTouched,
    Daemon,
    DaemonOptions,
    Drift,
    DriftReport,
    Gpus,
    Loaded,
    NvmlGpus,
    ReloadSignal,
    StopSignal,
    load_selected,
)
from migd.daemon.notify import Notifier, watchdog_interval
from migd.daemon.runtime import AlreadyRunning, ReloadAnswer, RuntimeDir
from migd.daemon.view import DaemonObserver, DaemonView, LateObserver, Observers, Phase, Trigger
from migd.errors import ConfigError, InvalidRequest, NvmlError
from migd.formats.files import atomic_write
from migd.formats.gpu_models import load_model
from migd.gpu.executor import GpuOutcome, GpuResult, ReconcileOptions, ReconcileResult

# ---------------------------------------------------------------------------
# sd_notify
# ---------------------------------------------------------------------------


def test_notifier_sends_utf8_assignments_in_one_datagram() -> None:
    listener = NotifyListener()
    try:
        notifier = Notifier(listener.address)
        notifier.reloading()
        notifier.status("applying 1g.18gb×2+2g.35gb to GPU 3\n(2/8)")
        wait_for(lambda: len(listener.snapshot()) == 2, "two datagrams")
        reloading, status = listener.snapshot()
        assert set(reloading.fields) == {"RELOADING", "MONOTONIC_USEC"}
        assert status.fields == {"STATUS": "applying 1g.18gb×2+2g.35gb to GPU 3 (2/8)"}
    finally:
        listener.close()


def test_a_full_notify_socket_never_blocks_and_holds_what_systemd_must_see(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="migd.daemon.notify")
    listener = NotifyListener()
    listener.pause()  # systemd busy: its socket's queue is full
    notifier = Notifier(listener.address)
    notifier.WARN_AFTER = 0.0  # say the stall at once (the daemon waits a few seconds)

    def send_while_nobody_reads() -> None:
        for n in range(30):
            notifier.status(f"step {n}")
        notifier.ready()
        notifier.reloading()
        notifier.status("later")
        for _ in range(3):
            notifier.watchdog()
        notifier.stopping()
        notifier.flush()  # still full: nothing more goes, nothing waits

    try:
        sender = threading.Thread(target=send_while_nobody_reads, daemon=True)
        sender.start()
        sender.join(timeout=10)
        assert not sender.is_alive(), "a send blocked on the full socket"
        assert notifier.holding
        stalls = [r for r in caplog.records if "has not read notifications" in r.getMessage()]
        assert len(stalls) == 1, stalls  # said once, not once per datagram

        # systemd reads again; the loop's retries send what was held, in order.
        listener.resume()
        wait_for(lambda: (notifier.flush(), not notifier.holding)[1], "the held datagrams sent")
        wait_for(lambda: any("STOPPING=1" in m for m in listener.snapshot()), "STOPPING=1")
        fields = [dict(m.fields) for m in listener.snapshot()]
        reloading = fields[1]
        assert set(reloading) == {"RELOADING", "MONOTONIC_USEC"}
        # The statuses in between are dropped: only the newest is worth showing late.
        # One WATCHDOG=1 stands for the three pings.
        assert fields == [
            {"READY": "1"},
            reloading,
            {"STATUS": "later"},
            {"WATCHDOG": "1"},
            {"STOPPING": "1"},
        ]
        assert "30 STATUS= line(s) dropped" in caplog.records[-1].getMessage()
    finally:
        notifier.close()
        listener.close()


def test_notifier_without_socket_does_nothing() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    notifier.ready()  # no error
    Notifier("/nonexistent/notify.sock").ready()  # logged once, not raised


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "3000000"}, 3.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42"}, 3.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "43"}, None),  # meant for another
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, 42) == expected


# ---------------------------------------------------------------------------
# The runtime directory
# ---------------------------------------------------------------------------


def test_one_daemon_per_runtime_directory(tmp_path: Path) -> None:
    runtime = RuntimeDir(tmp_path / "run")
    lock = runtime.claim(os.getpid())
    with pytest.raises(AlreadyRunning, match=str(os.getpid())):
        runtime.claim(os.getpid())
    assert runtime.read_pid() == os.getpid()
    lock.release()
    assert not runtime.pid_file.exists()
    runtime.claim(os.getpid()).release()


def test_reload_requests_are_answered_once_each(tmp_path: Path) -> None:
    runtime = RuntimeDir(tmp_path / "run")
    runtime.claim(os.getpid())
    first, second = runtime.request_reload(), runtime.request_reload()
    assert set(runtime.reload_requests()) == {first, second}
    runtime.answer((first,), ReloadAnswer(2, "config.yaml:3:1: bad"))
    assert runtime.reload_requests() == (second,)
    assert runtime.read_answer(first) == ReloadAnswer(2, "config.yaml:3:1: bad")
    assert runtime.read_answer(second) is None
    runtime.forget(first)
    assert runtime.read_answer(first) is None


def test_atomic_write_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    atomic_write(path, b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left


# ---------------------------------------------------------------------------
# The loop's decisions, over fake GPUs
# ---------------------------------------------------------------------------


class FakeGpus:
    """Answers reconciles with the outcomes given, one per call (the last one repeats).

    A reconcile waits for ``gate``, a drift check for ``check_gate``, when given.
    """

    def __init__(
        self,
        outcomes: Sequence[GpuOutcome | BaseException],
        drift: tuple[Drift, ...] = (),
        gate: threading.Event | None = None,
        check_gate: threading.Event | None = None,
        snapshot: NodeSnapshot | None = None,
    ) -> None:
        self.outcomes = list(outcomes)
        self.snapshot = snapshot or NodeSnapshot(())
        self.drift = drift
        self.gate = gate
        self.check_gate = check_gate
        self.reconciles: list[str] = []
        self.left_alone: list[frozenset[int]] = []
        self.checks = 0

    def reconcile(
        self,
        loaded: Loaded,
        options: ReconcileOptions,
        *,
        post_boot: bool = False,
        leave_alone: frozenset[int] = frozenset(),
    ) -> ReconcileResult:
        self.reconciles.append(loaded.name)
        self.left_alone.append(leave_alone)
        if options.progress is not None:
            options.progress(f"applying {loaded.name} to GPU 0 (1/1)")
        if self.gate is not None:
            self.gate.wait(timeout=30)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return ReconcileResult(
            loaded.name,
            (GpuResult(0, outcome, reason="" if outcome is GpuOutcome.APPLIED else "it broke"),),
            (DesiredGpu(0, True),),
            self.snapshot,
        )

    def check(self, loaded: Loaded) -> DriftReport:
        self.checks += 1
        if self.check_gate is not None:
            self.check_gate.wait(timeout=30)
        return DriftReport(self.snapshot, (DesiredGpu(0, True),), self.drift)

    def oldest_call_started(self) -> float | None:
        return None

    def close(self) -> None:
        pass


class Recorder(DaemonObserver):
    """An observer keeping everything the loop publishes."""

    def __init__(self) -> None:
        self.views: list[DaemonView] = []
        self.outcomes: list[tuple[Trigger, GpuOutcome]] = []
        self.failures: list[tuple[Trigger, str]] = []
        self.reloads: list[bool] = []
        self.drifts: list[int] = []

    def published(self, view: DaemonView) -> None:
        self.views.append(view)

    def reconciled(self, trigger: Trigger, result: ReconcileResult) -> None:
        self.outcomes.append((trigger, result.worst()))

    def reconcile_failed(self, trigger: Trigger, reason: str) -> None:
        self.failures.append((trigger, reason))

    def reload_attempted(self, ok: bool) -> None:
        self.reloads.append(ok)

    def drifted(self, gpu: int) -> None:
        self.drifts.append(gpu)

    def statuses(self) -> list[str]:
        return [v.status_line for v in self.views]

    def before_stop(self) -> DaemonView:
        """The last view published before the test stopped the daemon."""
        return [v for v in self.views if v.phase is not Phase.STOPPING][-1]


def test_an_observer_that_raises_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(DaemonObserver):
        def reload_attempted(self, ok: bool) -> None:
            raise RuntimeError("disk full")

    first, second = Recorder(), Recorder()
    observers = Observers([first, Broken(), second])
    observers.reload_attempted(False)
    observers.reconcile_failed(Trigger.RELOAD, "GPU_IS_LOST")
    assert first.reloads == second.reloads == [False]
    assert first.failures == second.failures == [(Trigger.RELOAD, "GPU_IS_LOST")]
    assert "observer Broken.reload_attempted failed" in caplog.text


def drive(
    tmp_path: Path,
    gpus: Gpus,
    *,
    config: str | None = None,
    until: Callable[[Recorder], bool] | None = None,
    during: Callable[[Daemon, Recorder], None] | None = None,
    boot_policy: str | None = None,
    exits: bool = False,
) -> tuple[int, Recorder, NotifyListener]:
    """Run a Daemon in this thread over ``gpus`` until ``until`` holds, then SIGTERM it;
    with ``exits`` it is expected to exit by itself (and is stopped if it does not).
    A failure in ``during`` or ``until`` fails the test once the daemon has exited."""
    path = tmp_path / "config.yaml"
    path.write_text(config or config_text())
    try:
        startup: Loaded | ConfigError = load_selected(str(path), None, {})
    except ConfigError as exc:
        startup = exc
    listener = NotifyListener()
    recorder = Recorder()
    runtime = RuntimeDir(tmp_path / "run")
    lock = runtime.claim(os.getpid())
    daemon = Daemon(
        DaemonOptions(str(path), boot_policy=boot_policy),  # type: ignore[arg-type]
        gpus,
        startup,
        runtime=runtime,
        notifier=Notifier(listener.address),
        observers=[recorder],
    )

    exited = threading.Event()
    failures: list[BaseException] = []

    def steer() -> None:
        try:
            if during is not None:
                during(daemon, recorder)
            if until is not None:
                wait_for(lambda: until(recorder), "the expected outcome", timeout=10)
            if exits:
                exited.wait(timeout=10)
        except BaseException as exc:
            failures.append(exc)
        finally:
            daemon.post(StopSignal(signal.SIGTERM))

    thread = threading.Thread(target=steer, daemon=True)
    thread.start()
    try:
        code = daemon.run()
    finally:
        exited.set()
        thread.join(timeout=10)
        listener.close()
        lock.release()
    if failures:
        raise failures[0]
    return code, recorder, listener


def test_retries_back_off_exponentially_up_to_the_maximum(tmp_path: Path) -> None:
    config = config_text(retry_initial="0.05s", retry_max="0.2s")
    gpus = FakeGpus([GpuOutcome.FAILED] * 5 + [GpuOutcome.APPLIED])
    code, recorder, listener = drive(
        tmp_path,
        gpus,
        config=config,
        until=lambda r: bool(r.views) and r.views[-1].phase is Phase.READY,
    )
    assert code == 0
    delays = [s.rsplit("retry in ", 1)[1] for s in recorder.statuses() if "retry in" in s]
    assert list(dict.fromkeys(delays)) == ["0.05 s)", "0.1 s)", "0.2 s)"]
    assert len(gpus.reconciles) == 6
    assert [t for t, _ in recorder.outcomes] == [Trigger.STARTUP] + [Trigger.RETRY] * 5
    # READY=1 once, after the first (failed) outcome: boot-policy continue.
    assert sum("READY=1" in m for m in listener.snapshot()) == 1


def test_a_reconcile_failing_as_a_whole_is_told_to_observers_and_retried(
    tmp_path: Path,
) -> None:
    """No GPU result (the node could not be read): still a failure metrics can count."""
    config = config_text(retry_initial="0.05s", retry_max="0.1s")
    lost = NvmlError("nvmlDeviceGetHandleByIndex", 15, "GPU_IS_LOST", "GPU is lost")
    gpus = FakeGpus([lost, lost, GpuOutcome.APPLIED])
    code, recorder, _ = drive(
        tmp_path,
        gpus,
        config=config,
        until=lambda r: bool(r.views) and r.views[-1].phase is Phase.READY,
    )
    assert code == 0
    assert recorder.failures == [(Trigger.STARTUP, "GPU_IS_LOST"), (Trigger.RETRY, "GPU_IS_LOST")]
    assert recorder.outcomes == [(Trigger.RETRY, GpuOutcome.APPLIED)]


def test_boot_policy_strict_exits_with_the_outcome_and_never_reports_ready(
    tmp_path: Path,
) -> None:
    gpus = FakeGpus([GpuOutcome.BLOCKED])
    code, _, listener = drive(tmp_path, gpus, boot_policy="strict", exits=True)
    assert code == 3
    assert not any("READY=1" in m for m in listener.snapshot())


def test_config_that_does_not_fit_the_node_is_refused_at_start(tmp_path: Path) -> None:
    gpus = FakeGpus([InvalidRequest("GPU 0 (NVIDIA H200) has no profile 1g.5gb")])
    _, recorder, _ = drive(
        tmp_path, gpus, until=lambda r: bool(r.views) and r.views[-1].phase is Phase.DEGRADED
    )
    view = recorder.before_stop()
    assert view.selected_config is None and not view.last_reload_ok
    assert view.status_line == (
        "degraded: config invalid, no GPU touched: GPU 0 (NVIDIA H200) has no profile 1g.5gb"
    )
    assert recorder.reloads == [False]


def test_stop_waits_for_the_job_in_progress(tmp_path: Path) -> None:
    gate = threading.Event()
    gpus = FakeGpus([GpuOutcome.APPLIED], gate=gate)

    def stop_then_release(daemon: Daemon, recorder: Recorder) -> None:
        wait_for(lambda: recorder.views and recorder.views[-1].phase is Phase.APPLYING, "apply")
        daemon.post(StopSignal(signal.SIGTERM))
        # STOPPING=1 and the stopping status while the job still runs in the worker.
        wait_for(lambda: recorder.views[-1].phase is Phase.STOPPING, "stopping")
        gate.set()

    code, recorder, listener = drive(tmp_path, gpus, during=stop_then_release)
    assert code == 0
    assert recorder.views[-2].status_line.startswith("stopping once this finishes: applying")
    assert recorder.outcomes == [(Trigger.STARTUP, GpuOutcome.APPLIED)]
    assert not any("READY=1" in m for m in listener.snapshot())
    assert any("STOPPING=1" in m for m in listener.snapshot())


def _stop_while(
    held: Callable[[], bool], gate: threading.Event, then: Callable[[Daemon], None] | None = None
) -> Callable[[Daemon, Recorder], None]:
    """Steer a drive: once ``held()`` (a job waits at ``gate``), SIGTERM; ``then``; release."""

    def steer(daemon: Daemon, recorder: Recorder) -> None:
        wait_for(held, "the job held")
        daemon.post(StopSignal(signal.SIGTERM))
        wait_for(lambda: recorder.views[-1].phase is Phase.STOPPING, "stopping")
        if then is not None:
            then(daemon)
        gate.set()

    return steer


def test_a_stop_during_a_drift_check_starts_no_repair(tmp_path: Path) -> None:
    gate = threading.Event()
    drift = (Drift(0, "holds 1g.18gb×6, config wants 1g.18gb×7"),)
    gpus = FakeGpus([GpuOutcome.APPLIED], drift=drift, check_gate=gate)
    config = config_text(drift="0.05s")  # policy repair
    code, recorder, _ = drive(
        tmp_path, gpus, config=config, during=_stop_while(lambda: gpus.checks == 1, gate)
    )
    assert code == 0
    assert gpus.checks == 1
    assert gpus.reconciles == ["balanced"]  # the startup only: the drift found is not repaired
    assert recorder.views[-1].gpus[0].reason.startswith("drifted: holds 1g.18gb×6")


def test_a_stop_during_a_failing_change_starts_no_retry_and_no_reload(tmp_path: Path) -> None:
    gate = threading.Event()
    gpus = FakeGpus([GpuOutcome.FAILED], gate=gate)
    config = config_text(retry_initial="0.05s", drift="0.05s")

    def sighup_and_edit(daemon: Daemon) -> None:
        daemon.post(ReloadSignal())
        (tmp_path / "config.yaml").write_text(config_text("small", drift="0.05s"))
        daemon.post(ConfigTouched())

    steer = _stop_while(lambda: gpus.reconciles == ["balanced"], gate, then=sighup_and_edit)
    code, recorder, _ = drive(tmp_path, gpus, config=config, during=steer)
    assert code == 0
    assert gpus.reconciles == ["balanced"] and gpus.checks == 0
    assert recorder.outcomes == [(Trigger.STARTUP, GpuOutcome.FAILED)]


def test_a_hanging_reset_command_is_cut_short_and_the_daemon_goes_on(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    hang = ["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait", "reset", "{bus_ids}"]
    settings = {"reset-command": hang, "reset-timeout": "1s"}
    config = geometry_config({"on": "3g=2"}, settings=settings)
    with scratch_dir(tmp_path) as scratch:
        make_node(scratch / "node.json", [A100])  # its mode change needs a reset
        code, recorder, listener = drive(
            tmp_path,
            NvmlGpus(),
            config=config,
            until=lambda r: bool(r.views and r.views[-1].gpus),
        )
    assert code == 0
    assert ended(int(pidfile.read_text())), "the reset command's child outlived it"
    (gpu,) = recorder.before_stop().gpus
    assert gpu.reboot_required
    assert "(/bin/sh did not finish within 1 s and was killed)" in gpu.reason
    assert any("READY=1" in m for m in listener.snapshot())  # boot-policy continue


def test_drift_under_policy_report_is_published_not_repaired(tmp_path: Path) -> None:
    drift = (Drift(0, "holds 1g.18gb×6, config wants 1g.18gb×7"),)
    gpus = FakeGpus([GpuOutcome.APPLIED], drift=drift)
    config = config_text(drift="0.05s", policy="report")
    _, recorder, _ = drive(
        tmp_path,
        gpus,
        config=config,
        until=lambda r: bool(r.views) and not r.views[-1].gpus[0].in_sync,
    )
    view = recorder.before_stop()
    assert view.phase is Phase.DEGRADED
    assert view.gpus[0].reason == "drifted: holds 1g.18gb×6, config wants 1g.18gb×7"
    assert gpus.reconciles == ["balanced"]  # the startup only: nothing repaired


def limited(window: str) -> str:
    """A config whose drift checks come every 0.05 s and repair twice per ``window``."""
    text = config_text(drift="0.05s")
    assert "    policy: repair\n" in text
    return text.replace(
        "    policy: repair\n", f"    policy: repair\n    max-repairs: 2\n    window: {window}\n"
    )


def test_a_gpu_drifting_after_max_repairs_within_the_window_is_left_alone(
    tmp_path: Path,
) -> None:
    drift = (Drift(0, "holds 1g.18gb×6, config wants 1g.18gb×7"),)
    gpus = FakeGpus([GpuOutcome.APPLIED], drift=drift)
    _, recorder, _ = drive(
        tmp_path,
        gpus,
        config=limited("1h"),
        until=lambda r: gpus.checks >= 6 and bool(r.views) and r.views[-1].gpus[0].contested,
    )
    # Startup, two repairs, then one reconcile that leaves GPU 0 alone (for its labels),
    # and none after it however often it is found drifted.
    assert gpus.reconciles == ["balanced"] * 4
    assert gpus.left_alone == [frozenset(), frozenset(), frozenset(), frozenset({0})]
    view = recorder.before_stop()
    assert view.phase is Phase.DEGRADED and view.gpus[0].outcome == "contested"
    assert "GPU 0 contested: drifted again after 2 repairs within 3600 s" in view.status_line


def test_repairs_older_than_the_window_do_not_count(tmp_path: Path) -> None:
    drift = (Drift(0, "holds 1g.18gb×6, config wants 1g.18gb×7"),)
    gpus = FakeGpus([GpuOutcome.APPLIED], drift=drift)
    _, recorder, _ = drive(
        tmp_path, gpus, config=limited("0.001s"), until=lambda r: len(gpus.reconciles) >= 6
    )
    assert not any(g.contested for v in recorder.views for g in v.gpus)
    assert set(gpus.left_alone) == {frozenset()}


def test_a_gpu_found_as_it_was_left_is_no_new_drift_and_never_contested(
    tmp_path: Path,
) -> None:
    # A blocked GPU stays as it was: each check finds it differing from the config, but
    # nothing changed it behind migd's back.
    node = NodeSnapshot((blank_gpu(load_model("H200"), index=0, mig_enabled=True),))
    drift = (Drift(0, "holds nothing, config wants 1g.18gb×7"),)
    gpus = FakeGpus([GpuOutcome.BLOCKED], drift=drift, snapshot=node)
    _, recorder, _ = drive(
        tmp_path, gpus, config=limited("1h"), until=lambda r: len(gpus.reconciles) >= 6
    )
    assert not any(g.contested for v in recorder.views for g in v.gpus)
    assert set(gpus.left_alone) == {frozenset()}


def test_state_file_holds_the_published_view(tmp_path: Path) -> None:
    gpus = FakeGpus([GpuOutcome.APPLIED])
    code, _, _ = drive(
        tmp_path, gpus, until=lambda r: bool(r.views) and r.views[-1].phase is Phase.READY
    )
    assert code == 0
    doc = json.loads((tmp_path / "run" / "state.json").read_text())
    assert doc["phase"] == "stopping" and doc["selected_config"] == "balanced"
    assert doc["gpus"] == [
        {
            "index": 0,
            "in_sync": True,
            "outcome": "applied",
            "reason": "",
            "reboot_required": False,
            "contested": False,
        }
    ]


def test_a_late_observer_hears_what_happened_before_it_came() -> None:
    """The metrics observer is set up after READY=1: nothing before it is lost."""
    late = LateObserver()
    first = DaemonView(pid=1, phase=Phase.STARTING, status_line="starting", config_file="c")
    ready = DaemonView(pid=1, phase=Phase.READY, status_line="ready", config_file="c")
    late.published(first)
    late.reload_attempted(True)
    late.reconcile_failed(Trigger.STARTUP, "GPU_IS_LOST")
    late.drifted(3)
    late.published(ready)
    recorder = Recorder()
    late.attach(recorder)
    assert recorder.reloads == [True]
    assert recorder.drifts == [3]
    assert recorder.failures == [(Trigger.STARTUP, "GPU_IS_LOST")]
    assert recorder.views == [ready]  # the last view, which replaces the ones before
    late.reload_attempted(False)
    assert recorder.reloads == [True, False]


def test_a_late_observer_that_never_comes_keeps_nothing() -> None:
    late = LateObserver()
    late.reload_attempted(True)
    late.drop()
    late.reload_attempted(False)
    recorder = Recorder()
    late.attach(recorder)
    assert recorder.reloads == [] and recorder.views == []
