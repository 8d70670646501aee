"""The metrics a scrape shows, built from hand-made daemon views and reconcile results."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from paths import REPO
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import migd
from migd.core.gpu_models import blank_gpu
from migd.core.layout import (
    ComputeInstance,
    DesiredGpu,
    GiSpec,
    GpuInstance,
    GpuState,
    NodeSnapshot,
    Placement,
)
from migd.daemon.metrics import MetricsObserver, remaining_capacity
from migd.daemon.view import DaemonView, GpuView, Phase, Trigger
from migd.formats.gpu_models import load_model
from migd.gpu.executor import GpuOutcome, GpuResult, ReconcileResult

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')"
)


def h200(index: int = 0, mig: bool = True) -> GpuState:
    return blank_gpu(load_model("H200"), index=index, mig_enabled=mig)


# H200 GI profile ids (NVML info.id), and the id of the CI spanning each GI, from the
# simulator's table of the real H200.
PROFILE_ID = {p.name: p.id for p in h200().profiles}
P_1G, P_2G, P_3G, P_1G_ME = (PROFILE_ID[n] for n in ("1g.18gb", "2g.35gb", "3g.71gb", "1g.18gb+me"))
FULL_CI = {p.id: p.full_ci().id for p in h200().profiles}  # type: ignore[union-attr]
CI_1C = 0  # the 1-slice CI profile inside any GI


def gi(
    gi_id: int, profile_id: int, start: int, size: int, cis: tuple[int, ...] = ()
) -> GpuInstance:
    """A GI holding the given CI profiles (its full CI when none are given)."""
    ci_ids = cis or (FULL_CI[profile_id],)
    return GpuInstance(
        id=gi_id,
        profile_id=profile_id,
        placement=Placement(start, size),
        compute_instances=tuple(
            ComputeInstance(id=n, profile_id=ci, placement=Placement(n, 1))
            for n, ci in enumerate(ci_ids)
        ),
    )


def holding(gpu: GpuState, *instances: GpuInstance) -> GpuState:
    return replace(gpu, instances=instances)


# The demo layout on an H200: 1g.18gb×2, 2g.35gb, 3g.71gb (GI ids as the driver gives them).
BALANCED = (gi(2, P_3G, 4, 4), gi(3, P_2G, 0, 2), gi(9, P_1G, 2, 1), gi(10, P_1G, 3, 1))
BALANCED_WANTED = DesiredGpu(
    0,
    True,
    tuple(sorted(GiSpec(p, (FULL_CI[p],)) for p in (P_3G, P_2G, P_1G, P_1G))),
)


def view(
    gpus: tuple[GpuState, ...],
    *,
    desired: tuple[DesiredGpu, ...] = (),
    in_sync: dict[int, bool] | None = None,
    phase: Phase = Phase.READY,
    **fields: object,
) -> DaemonView:
    in_sync = in_sync or {}
    return DaemonView(
        pid=4242,
        phase=phase,
        status_line="",
        config_file="/etc/migd/config.yaml",
        gpus=tuple(
            GpuView(
                index=g.index,
                in_sync=in_sync.get(g.index, True),
                outcome="noop" if in_sync.get(g.index, True) else "failed",
            )
            for g in gpus
        ),
        snapshot=NodeSnapshot(gpus, driver_version="580.159.04", nvml_version="13.580.159.04"),
        desired=desired,
        **fields,  # type: ignore[arg-type]
    )


def scrape(observer: MetricsObserver) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape as {(name, labels): value}, parsed from the exposition text."""
    text = generate_latest(observer.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: dict, name: str) -> list[dict[str, str]]:
    return sorted(
        (dict(labels) for n, labels in samples if n == name), key=lambda d: sorted(d.items())
    )


# ---------------------------------------------------------------------------
# The inventory
# ---------------------------------------------------------------------------


def test_before_any_view_the_daemon_is_not_ready_and_no_gpu_is_listed() -> None:
    samples = scrape(MetricsObserver())
    assert value(samples, "migd_ready") == 0
    assert series(samples, "migd_gpu_info") == []
    assert value(samples, "migd_build_info", version=migd.__version__) == 1


def test_ready_follows_the_phase() -> None:
    observer = MetricsObserver()
    for phase in Phase:
        observer.published(view((h200(),), phase=phase))
        samples = scrape(observer)
        assert value(samples, "migd_ready") == (1 if phase is Phase.READY else 0)
        assert value(samples, "migd_phase", phase=phase.value) == 1
        assert sum(v for (n, _), v in samples.items() if n == "migd_phase") == 1


def test_instances_appear_per_profile_and_vanish_once_destroyed() -> None:
    observer = MetricsObserver()
    observer.published(view((holding(h200(0), *BALANCED), h200(1))))
    samples = scrape(observer)
    assert value(samples, "migd_mig_devices", gpu="0", profile="1g.18gb") == 2
    assert value(samples, "migd_mig_devices", gpu="0", profile="2g.35gb") == 1
    assert value(samples, "migd_mig_devices", gpu="0", profile="3g.71gb") == 1
    assert len(series(samples, "migd_mig_device_info")) == 4
    assert {
        "gpu": "0",
        "gpu_instance_id": "2",
        "compute_instance_id": "0",
        "profile": "3g.71gb",
        "placement_start": "4",
        "placement_size": "4",
    } in series(samples, "migd_mig_device_info")

    # The 1g instances are destroyed: their series are gone from the next scrape.
    observer.published(view((holding(h200(0), *BALANCED[:2]), h200(1))))
    samples = scrape(observer)
    assert value(samples, "migd_mig_devices", gpu="0", profile="1g.18gb") is None
    assert value(samples, "migd_mig_devices", gpu="0", profile="3g.71gb") == 1
    assert sorted(s["profile"] for s in series(samples, "migd_mig_device_info")) == [
        "2g.35gb",
        "3g.71gb",
    ]
    assert series(samples, "migd_mig_devices") == [
        {"gpu": "0", "profile": "2g.35gb"},
        {"gpu": "0", "profile": "3g.71gb"},
    ]


def test_partial_compute_instances_are_counted_by_their_own_profile() -> None:
    split = gi(3, P_2G, 0, 2, cis=(CI_1C, CI_1C))
    observer = MetricsObserver()
    observer.published(view((holding(h200(), split),)))
    samples = scrape(observer)
    assert value(samples, "migd_mig_devices", gpu="0", profile="1c.2g.35gb") == 2
    assert value(samples, "migd_mig_devices", gpu="0", profile="2g.35gb") is None
    assert {s["compute_instance_id"] for s in series(samples, "migd_mig_device_info")} == {"0", "1"}


def test_desired_and_observed_are_separate_and_missing_profiles_show_zero() -> None:
    observer = MetricsObserver()
    half_done = holding(h200(), *BALANCED[:1])  # only the 3g.71gb is there
    observer.published(view((half_done,), desired=(BALANCED_WANTED,), in_sync={0: False}))
    samples = scrape(observer)
    assert value(samples, "migd_mig_devices_desired", gpu="0", profile="1g.18gb") == 2
    assert value(samples, "migd_mig_devices_desired", gpu="0", profile="2g.35gb") == 1
    assert value(samples, "migd_mig_devices_desired", gpu="0", profile="3g.71gb") == 1
    assert value(samples, "migd_mig_devices", gpu="0", profile="1g.18gb") == 0
    assert value(samples, "migd_mig_devices", gpu="0", profile="3g.71gb") == 1
    assert value(samples, "migd_gpu_config_in_sync", gpu="0") == 0
    assert value(samples, "migd_gpu_mig_mode_desired", gpu="0") == 1
    assert value(samples, "migd_gpu_last_reconcile_outcome", gpu="0", outcome="failed") == 1


def test_in_sync_per_gpu() -> None:
    observer = MetricsObserver()
    gpus = (holding(h200(0), *BALANCED), h200(1), h200(2))
    observer.published(view(gpus, in_sync={1: False}, phase=Phase.DEGRADED))
    samples = scrape(observer)
    assert value(samples, "migd_gpu_config_in_sync", gpu="0") == 1
    assert value(samples, "migd_gpu_config_in_sync", gpu="1") == 0
    assert value(samples, "migd_gpu_config_in_sync", gpu="2") == 1
    assert value(samples, "migd_ready") == 0


def test_contested_gpus_and_drift_events_per_gpu() -> None:
    observer = MetricsObserver()
    gpus = (holding(h200(0), *BALANCED), h200(1))
    published = view(gpus, phase=Phase.DEGRADED)
    contested = replace(published.gpus[1], in_sync=False, outcome="contested", contested=True)
    observer.published(replace(published, gpus=(published.gpus[0], contested)))
    observer.drifted(1)
    observer.drifted(1)
    samples = scrape(observer)
    assert value(samples, "migd_gpu_contested", gpu="0") == 0
    assert value(samples, "migd_gpu_contested", gpu="1") == 1
    assert value(samples, "migd_gpu_config_in_sync", gpu="1") == 0
    # Every GPU's count exists from its first view on, at 0.
    assert value(samples, "migd_gpu_drift_events_total", gpu="0") == 0
    assert value(samples, "migd_gpu_drift_events_total", gpu="1") == 2


def test_gpu_identity_mode_and_reboot_flags() -> None:
    pending = replace(h200(1, mig=False), mig_pending=True)
    observer = MetricsObserver()
    v = view((h200(0), pending))
    v = replace(v, gpus=(v.gpus[0], replace(v.gpus[1], in_sync=False, reboot_required=True)))
    observer.published(v)
    samples = scrape(observer)
    info = series(samples, "migd_gpu_info")
    assert [(s["gpu"], s["model"], s["mig_capable"]) for s in info] == [
        ("0", "NVIDIA H200", "true"),
        ("1", "NVIDIA H200", "true"),
    ]
    assert info[0]["uuid"].startswith("GPU-") and info[0]["pci_bus_id"]
    assert value(samples, "migd_gpu_mig_mode_enabled", gpu="1") == 0
    assert value(samples, "migd_gpu_mig_mode_change_pending", gpu="1") == 1
    assert value(samples, "migd_gpu_mig_mode_change_pending", gpu="0") == 0
    assert value(samples, "migd_gpu_reboot_required", gpu="1") == 1
    assert value(samples, "migd_gpu_reboot_required", gpu="0") == 0
    assert value(
        samples, "migd_nvml_info", driver_version="580.159.04", nvml_version="13.580.159.04"
    )


def test_device_plugin_strategies() -> None:
    observer = MetricsObserver()
    # Balanced layouts: several device types (not single), no empty MIG GPU (mixed is fine).
    observer.published(view((holding(h200(0), *BALANCED), holding(h200(1), *BALANCED))))
    samples = scrape(observer)
    assert value(samples, "migd_device_plugin_strategy_compatible", strategy="none") == 1
    assert value(samples, "migd_device_plugin_strategy_compatible", strategy="single") == 0
    assert value(samples, "migd_device_plugin_strategy_compatible", strategy="mixed") == 1
    # A MIG-enabled GPU without any device: mixed would warn (or fail at start).
    observer.published(view((holding(h200(0), *BALANCED), h200(1))))
    samples = scrape(observer)
    assert value(samples, "migd_device_plugin_strategy_compatible", strategy="mixed") == 0


def test_config_state_comes_from_the_view() -> None:
    observer = MetricsObserver()
    observer.published(
        view(
            (h200(),),
            selected_config="all-balanced",
            config_digest="sha256:0123abcd",
            last_reload_ok=False,
            last_reload_success_time=1700000000.0,
            last_success_time=1700000100.0,
            last_reconcile_time=1700000200.0,
        )
    )
    samples = scrape(observer)
    assert value(samples, "migd_config_info", selected="all-balanced", hash="sha256:0123abcd") == 1
    assert value(samples, "migd_config_last_reload_successful") == 0
    assert value(samples, "migd_config_last_reload_success_timestamp_seconds") == 1700000000.0
    assert value(samples, "migd_last_successful_reconcile_timestamp_seconds") == 1700000100.0
    assert value(samples, "migd_last_reconcile_timestamp_seconds") == 1700000200.0


# ---------------------------------------------------------------------------
# Remaining capacity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instances", "expected"),
    [
        # An empty GPU offers each profile's full instance count.
        (
            (),
            {"1g.18gb": 7, "1g.18gb+me": 1, "1g.35gb": 4, "2g.35gb": 3, "3g.71gb": 2},
        ),
        # The balanced layout fills all eight memory slices: nothing more fits.
        (
            BALANCED,
            {"1g.18gb": 0, "1g.18gb+me": 0, "1g.35gb": 0, "2g.35gb": 0, "3g.71gb": 0},
        ),
        # 2g.35gb on 0-1 and 3g.71gb on 4-7 leave slices 2-3: two 1g, or one 2g.
        (
            (gi(3, P_2G, 0, 2), gi(2, P_3G, 4, 4)),
            {"1g.18gb": 2, "1g.18gb+me": 1, "1g.35gb": 1, "2g.35gb": 1, "3g.71gb": 0},
        ),
        # A 3g.71gb on slots 0-3: the other half takes a second 3g, or 1g's on 4-6.
        (
            (gi(1, P_3G, 0, 4),),
            {"1g.18gb": 3, "2g.35gb": 1, "3g.71gb": 1, "4g.71gb": 0, "7g.141gb": 0},
        ),
        # One +me GI per GPU: with one present, no other fits however free the GPU is.
        ((gi(7, P_1G_ME, 0, 1),), {"1g.18gb+me": 0, "1g.18gb": 6}),
        # Seven 1g.18gb: the profile's instance count and the compute slices are spent.
        (
            tuple(gi(7 + k, P_1G, k, 1) for k in range(7)),
            {"1g.18gb": 0, "1g.35gb": 0, "1g.18gb+me": 0},
        ),
    ],
    ids=["empty", "balanced", "2g-3g", "one-3g", "one-me", "seven-1g"],
)
def test_remaining_capacity(instances: tuple[GpuInstance, ...], expected: dict[str, int]) -> None:
    gpu = holding(h200(), *instances)
    got = {p.name: remaining_capacity(gpu, p) for p in gpu.profiles}
    assert {name: got[name] for name in expected} == expected

    observer = MetricsObserver()
    observer.published(view((gpu,)))
    samples = scrape(observer)
    for name, count in expected.items():
        assert (
            value(samples, "migd_gpu_instance_profile_remaining_capacity", gpu="0", profile=name)
            == count
        )


def test_no_capacity_is_reported_for_a_gpu_with_mig_off() -> None:
    observer = MetricsObserver()
    observer.published(view((h200(0, mig=False),)))
    assert series(scrape(observer), "migd_gpu_instance_profile_remaining_capacity") == []


# ---------------------------------------------------------------------------
# Counters and the histogram, through the observer
# ---------------------------------------------------------------------------


def result(*gpus: GpuResult, seconds: float = 0.2) -> ReconcileResult:
    snapshot = NodeSnapshot(tuple(h200(g.index) for g in gpus))
    return ReconcileResult("all-balanced", gpus, (), snapshot, duration_seconds=seconds)


def test_reconciles_are_counted_by_trigger_and_worst_outcome() -> None:
    observer = MetricsObserver()
    samples = scrape(observer)
    # Every trigger × result exists at zero before the first reconcile (rate() and alerts).
    assert value(samples, "migd_reconciles_total", trigger="drift", result="failed") == 0
    assert len(series(samples, "migd_reconciles_total")) == 5 * 5

    observer.reconciled(Trigger.STARTUP, result(GpuResult(0, GpuOutcome.APPLIED, mutations=8)))
    observer.reconciled(
        Trigger.FILE,
        result(
            GpuResult(0, GpuOutcome.APPLIED),
            GpuResult(1, GpuOutcome.FAILED, "no room", error="INSUFFICIENT_RESOURCES"),
            seconds=42.0,
        ),
    )
    observer.reconciled(Trigger.DRIFT, result(GpuResult(0, GpuOutcome.NOOP)))
    observer.reconciled(Trigger.RETRY, result(GpuResult(0, GpuOutcome.SKIPPED)))
    observer.reconciled(
        Trigger.RELOAD, result(GpuResult(2, GpuOutcome.BLOCKED, "pid 4242", error="busy"))
    )
    samples = scrape(observer)
    assert value(samples, "migd_reconciles_total", trigger="startup", result="applied") == 1
    assert value(samples, "migd_reconciles_total", trigger="file", result="failed") == 1
    assert value(samples, "migd_reconciles_total", trigger="drift", result="noop") == 1
    assert value(samples, "migd_reconciles_total", trigger="retry", result="noop") == 1
    assert value(samples, "migd_reconciles_total", trigger="reload", result="blocked") == 1
    assert value(samples, "migd_reconcile_duration_seconds_count") == 5
    assert value(samples, "migd_reconcile_duration_seconds_sum") == pytest.approx(42.8)
    assert value(samples, "migd_reconcile_duration_seconds_bucket", le="0.25") == 4
    assert value(samples, "migd_reconcile_duration_seconds_bucket", le="60.0") == 5
    assert value(samples, "migd_reconcile_duration_seconds_bucket", le="600.0") == 5
    assert value(samples, "migd_apply_errors_total", gpu="1", reason="INSUFFICIENT_RESOURCES") == 1
    assert value(samples, "migd_apply_errors_total", gpu="2", reason="busy") == 1
    assert value(samples, "migd_nvml_mutations_total", gpu="0") == 8


def test_resets_and_reboot_required() -> None:
    observer = MetricsObserver()
    observer.reconciled(Trigger.STARTUP, result(GpuResult(0, GpuOutcome.APPLIED, reset=True)))
    observer.reconciled(
        Trigger.STARTUP,
        result(GpuResult(1, GpuOutcome.REBOOT_REQUIRED, "reset refused", reset=True)),
    )
    samples = scrape(observer)
    assert value(samples, "migd_gpu_resets_total", gpu="0", result="success") == 1
    assert value(samples, "migd_gpu_resets_total", gpu="1", result="failure") == 1
    assert value(samples, "migd_apply_errors_total", gpu="1", reason="reboot_required") == 1
    assert value(samples, "migd_reconciles_total", trigger="startup", result="reboot_required") == 1


def test_reload_attempts_are_counted() -> None:
    observer = MetricsObserver()
    observer.reload_attempted(True)
    observer.reload_attempted(False)
    observer.reload_attempted(False)
    samples = scrape(observer)
    assert value(samples, "migd_config_reloads_total", result="success") == 1
    assert value(samples, "migd_config_reloads_total", result="failure") == 2


def test_label_values_stay_bounded() -> None:
    """Error text, numbers and MIG UUIDs never become label values of a counter."""
    observer = MetricsObserver()
    wild = [
        "nvmlDeviceCreateGpuInstanceWithPlacement failed: Insufficient Resources",
        "MIG-5c2d4e8a-1111-2222-3333-444455556666",
        "42",
        "",
        None,
    ]
    for i, error in enumerate(wild):
        observer.reconciled(
            Trigger.RETRY, result(GpuResult(i, GpuOutcome.FAILED, "it broke", error=error))
        )
    observer.published(view((holding(h200(), *BALANCED),)))
    samples = scrape(observer)
    reasons = {s["reason"] for s in series(samples, "migd_apply_errors_total")}
    assert reasons == {"failed"}
    for name, labels in samples:
        for label_value in dict(labels).values():
            assert not label_value.startswith("MIG-"), (name, labels)
            assert "Insufficient" not in label_value and "broke" not in label_value, (name, labels)


def test_each_observer_has_its_own_registry() -> None:
    a, b = MetricsObserver(), MetricsObserver()
    a.reconciled(Trigger.STARTUP, result(GpuResult(0, GpuOutcome.APPLIED)))
    assert value(scrape(a), "migd_reconciles_total", trigger="startup", result="applied") == 1
    assert value(scrape(b), "migd_reconciles_total", trigger="startup", result="applied") == 0


# ---------------------------------------------------------------------------
# promtool
# ---------------------------------------------------------------------------


@needs_promtool
def test_promtool_finds_no_problem_in_the_exposition(tmp_path: Path) -> None:
    observer = MetricsObserver()
    observer.published(
        view(
            (holding(h200(0), *BALANCED), h200(1, mig=False)),
            desired=(BALANCED_WANTED,),
            selected_config="all-balanced",
            config_digest="0123abcd",
            last_reload_success_time=1700000000.0,
            last_success_time=1700000000.0,
            last_reconcile_time=1700000000.0,
        )
    )
    observer.reconciled(
        Trigger.STARTUP, result(GpuResult(0, GpuOutcome.FAILED, error="UNKNOWN"), seconds=3)
    )
    observer.reload_attempted(True)
    text = generate_latest(observer.registry)
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert done.stdout.strip() == b"" and done.stderr.strip() == b""


@needs_promtool
def test_promtool_accepts_the_example_scrape_config_and_alert_rules() -> None:
    config_dir = REPO / "configs" / "prometheus"
    rules = subprocess.run(
        [PROMTOOL, "check", "rules", str(config_dir / "migd-alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = subprocess.run(
        [PROMTOOL, "check", "config", str(config_dir / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS" in config.stdout + config.stderr


# Each alert, fed with series as migd exports them: silent before its `for:` has passed
# (or when the problem is elsewhere), firing after. Annotations are left out of the
# comparison (they are prose); names, expressions, durations and labels are what matter.
ALERT_CASES = """
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{job="migd",instance="n1:9402"}'
        values: '0x10'
      - series: 'up{job="migd",instance="n2:9402"}'
        values: '1x10'
    alert_rule_test:
      - {eval_time: 4m, alertname: MigdDown, exp_alerts: []}
      - eval_time: 6m
        alertname: MigdDown
        exp_alerts:
          - exp_labels: {severity: critical, job: migd, instance: "n1:9402"}
  - interval: 1m
    input_series:
      - series: 'migd_ready{job="migd",instance="n1:9402"}'
        values: '0x20'
    alert_rule_test:
      - {eval_time: 10m, alertname: MigdNotReady, exp_alerts: []}
      - eval_time: 16m
        alertname: MigdNotReady
        exp_alerts:
          - exp_labels: {severity: warning, job: migd, instance: "n1:9402"}
  - interval: 1m
    input_series:
      - series: 'migd_gpu_config_in_sync{job="migd",instance="n1:9402",gpu="0"}'
        values: '1x20'
      - series: 'migd_gpu_config_in_sync{job="migd",instance="n1:9402",gpu="1"}'
        values: '1 1 0x18'
    alert_rule_test:
      - {eval_time: 9m, alertname: MigdGpuLayoutOutOfSync, exp_alerts: []}
      - eval_time: 13m
        alertname: MigdGpuLayoutOutOfSync
        exp_alerts:
          - exp_labels: {severity: warning, job: migd, instance: "n1:9402", gpu: "1"}
  - interval: 1m
    input_series:
      - series: 'migd_reconciles_total{job="migd",instance="n1",trigger="file",result="failed"}'
        values: '0 0 0 1 2 3 3x30'
      - series: 'migd_reconciles_total{job="migd",instance="n1",trigger="file",result="applied"}'
        values: '0 1 2 3x33'
    alert_rule_test:
      - {eval_time: 5m, alertname: MigdReconcileFailing, exp_alerts: []}
      - eval_time: 10m
        alertname: MigdReconcileFailing
        exp_alerts:
          - exp_labels: {severity: warning, job: migd, instance: "n1"}
      - {eval_time: 30m, alertname: MigdReconcileFailing, exp_alerts: []}
  - interval: 1m
    input_series:
      - series: 'migd_gpu_reboot_required{job="migd",instance="n1:9402",gpu="3"}'
        values: '0 1x5'
      - series: 'migd_gpu_reboot_required{job="migd",instance="n1:9402",gpu="4"}'
        values: '0x6'
    alert_rule_test:
      - {eval_time: 0m, alertname: MigdGpuRebootRequired, exp_alerts: []}
      - eval_time: 2m
        alertname: MigdGpuRebootRequired
        exp_alerts:
          - exp_labels: {severity: warning, job: migd, instance: "n1:9402", gpu: "3"}
  - interval: 1m
    input_series:
      - series: 'migd_gpu_contested{job="migd",instance="n1:9402",gpu="1"}'
        values: '0 1x5'
      - series: 'migd_gpu_contested{job="migd",instance="n1:9402",gpu="2"}'
        values: '0x6'
    alert_rule_test:
      - {eval_time: 0m, alertname: MigdGpuContested, exp_alerts: []}
      - eval_time: 2m
        alertname: MigdGpuContested
        exp_alerts:
          - exp_labels: {severity: warning, job: migd, instance: "n1:9402", gpu: "1"}
  - interval: 1m
    input_series:
      - series: 'migd_config_last_reload_successful{job="migd",instance="n1:9402"}'
        values: '1 1 0x5'
    alert_rule_test:
      - {eval_time: 2m, alertname: MigdConfigReloadFailed, exp_alerts: []}
      - eval_time: 4m
        alertname: MigdConfigReloadFailed
        exp_alerts:
          - exp_labels: {severity: warning, job: migd, instance: "n1:9402"}
"""


@needs_promtool
def test_alerts_fire_when_and_only_when_they_should(tmp_path: Path) -> None:
    rules = yaml.safe_load((REPO / "configs" / "prometheus" / "migd-alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    for rule in alerts:
        rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    cases = yaml.safe_load(ALERT_CASES)
    cases["rule_files"] = [str(tmp_path / "rules.yml")]
    tested = {t["alertname"] for case in cases["tests"] for t in case["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in alerts}, "every alert has a case"
    (tmp_path / "cases.yml").write_text(yaml.safe_dump(cases))
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(tmp_path / "cases.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_reconcile_failing_as_a_whole_counts_as_failed() -> None:
    """No GPU result to show, but the reconcile-failing alert must still see it."""
    observer = MetricsObserver()
    before = value(scrape(observer), "migd_reconciles_total", trigger="reload", result="failed")
    observer.reconcile_failed(Trigger.RELOAD, "GPU_IS_LOST")
    samples = scrape(observer)
    assert value(samples, "migd_reconciles_total", trigger="reload", result="failed") == before + 1
    assert not any("GPU_IS_LOST" in str(labels) for (_, labels) in samples)  # no label for it
