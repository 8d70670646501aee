"""Prometheus metrics: the node's MIG inventory, the daemon's health, reconcile history.

Two kinds of state, two mechanisms (client_python's custom-collector pattern):

* The inventory (GPUs, MIG devices, desired layouts, remaining capacity, readiness,
  config) is derived by ``InventoryCollector`` from the last ``DaemonView`` the daemon
  published. The view is immutable and swapped by reference, so a scrape never waits
  for the loop or NVML, and the series of an instance that no longer exists are simply
  not produced again. The endpoint renders once per published view or counted event
  (``MetricsObserver.version``) and serves that answer to every scrape in between.
* Events (reconciles, apply errors, resets, reload attempts) are counters and a
  histogram, updated by ``MetricsObserver`` when the daemon reports them.

Everything lives on the observer's own ``CollectorRegistry`` (one per daemon, nothing
global). Label values are bounded: NVML indices, profile names, outcome and trigger
words, NVML error names; never error text or MIG UUIDs on counters.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from migd import __version__
from migd.core.config import MetricsSettings
from migd.core.layout import ComputeInstance, GiProfile, GiSpec, GpuInstance, GpuState, NodeSnapshot
from migd.core.names import layout_counts, observed_layout, spec_names
from migd.core.placement import layout_problem
from migd.daemon.httpserver import MetricsServer
from migd.daemon.listen import endpoint_address
from migd.daemon.view import DaemonObserver, DaemonView, Phase, Trigger
from migd.gpu.executor import GpuOutcome, ReconcileResult
from migd.node.strategy import STRATEGIES, check_strategy

log = logging.getLogger("migd.daemon.metrics")

# From a no-op reconcile (tens of ms) to a mode change with a GPU reset (minutes).
RECONCILE_DURATION_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

# The ``result`` label of migd_reconciles_total: the worst GPU outcome of the reconcile.
RECONCILE_RESULTS = ("applied", "noop", "failed", "blocked", "reboot_required")
_RESULT_OF = {
    GpuOutcome.NOOP: "noop",
    GpuOutcome.SKIPPED: "noop",
    GpuOutcome.APPLIED: "applied",
    GpuOutcome.BLOCKED: "blocked",
    GpuOutcome.REBOOT_REQUIRED: "reboot_required",
    GpuOutcome.FAILED: "failed",
}
_UNSETTLED = (GpuOutcome.FAILED, GpuOutcome.BLOCKED, GpuOutcome.REBOOT_REQUIRED)

# An NVML error name (IN_USE, INSUFFICIENT_RESOURCES) or a migd reason word; anything
# else (a sentence, a number) is replaced by the outcome so the label stays bounded.
_REASON_RE = r"^(?:[A-Z][A-Z0-9_]{0,39}|[a-z][a-z0-9_]{0,39})$"


def _gpu_label(index: int) -> str:
    return str(index)  # the NVML index, as DCGM exporter and nvidia-smi show it


def _flag(value: bool) -> float:
    return 1.0 if value else 0.0


# ---------------------------------------------------------------------------
# Pure helpers over the snapshot (no NVML)
# ---------------------------------------------------------------------------


def device_name(gpu: GpuState, gi: GpuInstance, ci: ComputeInstance) -> str:
    """The profile label of one MIG device, named as the config names it: the GI
    profile's name for a CI spanning its GI, the CI profile's (``1c.2g.35gb``) otherwise."""
    return spec_names(gpu, GiSpec(gi.profile_id, (ci.profile_id,)))[0]


def remaining_capacity(gpu: GpuState, profile: GiProfile) -> int:
    """How many more GIs of ``profile`` ``gpu`` could take without moving what it holds.

    The planner's own rules decide: the new GIs must fit the slices the existing ones
    leave free, and all of them together must respect the instance counts, the
    compute-slice budget and the media-engine limit (as NVML's remaining capacity).
    """
    held = [GiSpec(gi.profile_id, ()) for gi in gpu.instances]
    occupied = [gi.placement for gi in gpu.instances]
    count = 0
    while count < profile.instance_count:
        wanted = [GiSpec(profile.id, ())] * (count + 1)
        if layout_problem(gpu, [*held, *wanted]) or layout_problem(gpu, wanted, occupied):
            break
        count += 1
    return count


# ---------------------------------------------------------------------------
# The inventory collector
# ---------------------------------------------------------------------------


class InventoryCollector(Collector):
    """Builds the inventory families from the last published ``DaemonView`` at each scrape.

    ``update`` swaps the view by reference (atomic in CPython); ``collect`` reads that
    reference once, so a scrape sees one consistent view and never blocks.
    """

    def __init__(self) -> None:
        self._view: DaemonView | None = None

    def update(self, view: DaemonView) -> None:
        self._view = view

    @property
    def view(self) -> DaemonView | None:
        return self._view

    def describe(self) -> list[Metric]:
        # The names this collector may produce, for the registry's duplicate check.
        return list(_inventory_families(None))

    def collect(self) -> Iterator[Metric]:
        yield from _inventory_families(self._view)


def _inventory_families(view: DaemonView | None) -> Iterator[Metric]:
    build = GaugeMetricFamily("migd_build_info", "migd's version; always 1.", labels=["version"])
    build.add_metric([__version__], 1)
    yield build

    ready = GaugeMetricFamily(
        "migd_ready",
        "1 when every GPU covered by the selected config holds its layout "
        "(the daemon told systemd READY=1 and nothing has drifted since).",
    )
    ready.add_metric([], _flag(view is not None and view.phase is Phase.READY))
    yield ready

    phase = GaugeMetricFamily(
        "migd_phase",
        "The daemon's phase: 1 for the current one, 0 for the others.",
        labels=["phase"],
    )
    for p in Phase:
        phase.add_metric([p.value], _flag(view is not None and view.phase is p))
    yield phase

    yield from _config_families(view)
    yield from _gpu_families(view)


def _config_families(view: DaemonView | None) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "migd_config_info",
        "The config in force: selected config name and the file's digest; always 1.",
        labels=["selected", "hash"],
    )
    reload_ok = GaugeMetricFamily(
        "migd_config_last_reload_successful",
        "1 if the last config (re)load was accepted, 0 if it was refused "
        "(the daemon keeps the last good config).",
    )
    reload_time = GaugeMetricFamily(
        "migd_config_last_reload_success_timestamp_seconds",
        "Unix time of the last accepted config (re)load.",
    )
    success_time = GaugeMetricFamily(
        "migd_last_successful_reconcile_timestamp_seconds",
        "Unix time of the last reconcile that left no GPU failed, blocked or waiting for a reboot.",
    )
    reconcile_time = GaugeMetricFamily(
        "migd_last_reconcile_timestamp_seconds",
        "Unix time of the last reconcile, whatever its end.",
    )
    if view is not None:
        if view.selected_config is not None:
            info.add_metric([view.selected_config, view.config_digest or ""], 1)
        reload_ok.add_metric([], _flag(view.last_reload_ok))
        if view.last_reload_success_time is not None:
            reload_time.add_metric([], view.last_reload_success_time)
        if view.last_success_time is not None:
            success_time.add_metric([], view.last_success_time)
        if view.last_reconcile_time is not None:
            reconcile_time.add_metric([], view.last_reconcile_time)
    yield from (info, reload_ok, reload_time, success_time, reconcile_time)


def _gpu_families(view: DaemonView | None) -> Iterator[Metric]:
    snapshot: NodeSnapshot | None = view.snapshot if view is not None else None
    gpus = snapshot.gpus if snapshot is not None else ()
    gpu_views = view.gpus if view is not None else ()
    desired_by_index = {d.index: d for d in view.desired} if view is not None else {}

    nvml = GaugeMetricFamily(
        "migd_nvml_info",
        "NVIDIA driver and NVML versions of the node; always 1.",
        labels=["driver_version", "nvml_version"],
    )
    if snapshot is not None:
        nvml.add_metric([snapshot.driver_version, snapshot.nvml_version], 1)
    yield nvml

    info = GaugeMetricFamily(
        "migd_gpu_info",
        "One series per GPU with its identity; always 1.",
        labels=["gpu", "uuid", "pci_bus_id", "model", "mig_capable"],
    )
    mode = GaugeMetricFamily(
        "migd_gpu_mig_mode_enabled",
        "1 if MIG mode is currently enabled on the GPU.",
        labels=["gpu"],
    )
    pending = GaugeMetricFamily(
        "migd_gpu_mig_mode_change_pending",
        "1 if a MIG mode change is pending on the GPU (it needs a GPU reset or a reboot).",
        labels=["gpu"],
    )
    mode_desired = GaugeMetricFamily(
        "migd_gpu_mig_mode_desired",
        "1 if the selected config wants MIG mode enabled on the GPU; absent if the "
        "config does not cover it.",
        labels=["gpu"],
    )
    devices = GaugeMetricFamily(
        "migd_mig_devices",
        "MIG devices on the GPU per profile, named as in the config (a GPU instance "
        "with its full compute instance counts as its GI profile, each partial compute "
        "instance as its 1c.2g.35gb-style profile); 0 for a profile the config wants "
        "but the GPU does not hold.",
        labels=["gpu", "profile"],
    )
    devices_desired = GaugeMetricFamily(
        "migd_mig_devices_desired",
        "MIG devices the selected config wants on the GPU per profile.",
        labels=["gpu", "profile"],
    )
    capacity = GaugeMetricFamily(
        "migd_gpu_instance_profile_remaining_capacity",
        "How many more GPU instances of the profile fit the GPU's free slices now "
        "(GPUs with MIG mode enabled).",
        labels=["gpu", "profile"],
    )
    device_info = GaugeMetricFamily(
        "migd_mig_device_info",
        "One series per MIG device with its GPU-instance and compute-instance ids and "
        "placement (join with DCGM exporter on gpu and GPU_I_ID); always 1.",
        labels=[
            "gpu",
            "gpu_instance_id",
            "compute_instance_id",
            "profile",
            "placement_start",
            "placement_size",
        ],
    )
    for gpu in gpus:
        label = _gpu_label(gpu.index)
        info.add_metric(
            [label, gpu.uuid, gpu.bus_id, gpu.name, "true" if gpu.mig_capable else "false"], 1
        )
        if not gpu.mig_capable:
            continue
        mode.add_metric([label], _flag(gpu.mig_enabled))
        pending.add_metric([label], _flag(gpu.mode_change_pending))
        observed = dict(observed_layout(gpu))
        desired = desired_by_index.get(gpu.index)
        wanted: dict[str, int] = {}
        if desired is not None:
            mode_desired.add_metric([label], _flag(desired.mig_enabled))
            if desired.mig_enabled:
                wanted = dict(layout_counts(gpu, desired.instances))
        for name in sorted(observed.keys() | wanted.keys()):
            devices.add_metric([label, name], observed.get(name, 0))
        for name, count in sorted(wanted.items()):
            devices_desired.add_metric([label, name], count)
        if gpu.mig_enabled:
            for profile in gpu.profiles:
                capacity.add_metric([label, profile.name], remaining_capacity(gpu, profile))
        for gi in gpu.instances:
            for ci in gi.compute_instances:
                device_info.add_metric(
                    [
                        label,
                        str(gi.id),
                        str(ci.id),
                        device_name(gpu, gi, ci),
                        str(gi.placement.start),
                        str(gi.placement.size),
                    ],
                    1,
                )
    yield from (info, mode, pending, mode_desired, devices, devices_desired, capacity, device_info)

    plugin = GaugeMetricFamily(
        "migd_device_plugin_strategy_compatible",
        "1 if the node's MIG devices suit the Kubernetes device plugin's MIG strategy "
        "(none, single, mixed), 0 if the plugin would fail or warn.",
        labels=["strategy"],
    )
    if snapshot is not None:
        for strategy in STRATEGIES:
            plugin.add_metric([strategy], _flag(check_strategy(strategy, snapshot).compatible))
    yield plugin

    in_sync = GaugeMetricFamily(
        "migd_gpu_config_in_sync",
        "1 if the GPU holds the layout the selected config wants for it (or is not "
        "covered by it), 0 if not (failed, blocked, waiting for a reboot, drifted).",
        labels=["gpu"],
    )
    reboot = GaugeMetricFamily(
        "migd_gpu_reboot_required",
        "1 if the GPU's layout can only be reached after a reboot (pending mode change "
        "and the GPU cannot be reset).",
        labels=["gpu"],
    )
    outcome = GaugeMetricFamily(
        "migd_gpu_last_reconcile_outcome",
        "How the last reconcile ended for the GPU: 1 for that outcome, 0 for the others.",
        labels=["gpu", "outcome"],
    )
    contested = GaugeMetricFamily(
        "migd_gpu_contested",
        "1 if something other than migd keeps changing the GPU and migd stopped repairing "
        "it (drift-check.max-repairs within drift-check.window), until a reload or edit.",
        labels=["gpu"],
    )
    for g in gpu_views:
        label = _gpu_label(g.index)
        in_sync.add_metric([label], _flag(g.in_sync))
        reboot.add_metric([label], _flag(g.reboot_required))
        contested.add_metric([label], _flag(g.contested))
        if g.outcome:
            for o in GpuOutcome:
                outcome.add_metric([label, o.value], _flag(g.outcome == o.value))
    yield from (in_sync, reboot, outcome, contested)


# ---------------------------------------------------------------------------
# The observer: the daemon's hook into all of the above
# ---------------------------------------------------------------------------


class MetricsObserver(DaemonObserver):
    """A ``DaemonObserver`` that owns a registry with migd's metrics.

    ``published`` only swaps a reference and the counter updates are lock-free
    increments, so the daemon's loop is never held up by a scrape.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.inventory = InventoryCollector()
        self.registry.register(self.inventory)
        self.reconciles = Counter(
            "migd_reconciles",
            "Reconciles by what started them and how they ended (the worst GPU outcome).",
            ["trigger", "result"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "migd_reconcile_duration_seconds",
            "Wall time of a reconcile: snapshot, plan, act, verify.",
            buckets=RECONCILE_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.apply_errors = Counter(
            "migd_apply_errors",
            "GPUs a reconcile left failed, blocked or waiting for a reboot, by NVML error "
            "name or outcome word.",
            ["gpu", "reason"],
            registry=self.registry,
        )
        self.resets = Counter(
            "migd_gpu_resets",
            "GPU resets done to activate a MIG mode change, by whether the GPU then "
            "reached its layout.",
            ["gpu", "result"],
            registry=self.registry,
        )
        self.mutations = Counter(
            "migd_nvml_mutations",
            "Mutating NVML calls (create, destroy, mode change) issued per GPU.",
            ["gpu"],
            registry=self.registry,
        )
        self.drift_events = Counter(
            "migd_gpu_drift_events",
            "Changes behind migd's back found by drift checks (instances appeared or "
            "disappeared, MIG mode changed), per GPU.",
            ["gpu"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "migd_config_reloads",
            "Config (re)load attempts by result (success: accepted; failure: refused).",
            ["result"],
            registry=self.registry,
        )
        # Every combination exists from the start, so rate() and alerts work before the
        # first failure ever happens.
        for trigger in Trigger:
            for result in RECONCILE_RESULTS:
                self.reconciles.labels(trigger.value, result)
        for result in ("success", "failure"):
            self.reloads.labels(result)
        # Counts the events recorded above; with the view, what the registry holds.
        self._events = 0

    def version(self) -> tuple[DaemonView | None, int]:
        """What the registry's content depends on: the published view and the events
        counted so far. The endpoint renders its answer once per version."""
        return (self.inventory.view, self._events)

    # DaemonObserver -------------------------------------------------------

    def published(self, view: DaemonView) -> None:
        self.inventory.update(view)
        for g in view.gpus:
            # Every GPU's drift count exists from its first view on, at 0, for increase().
            self.drift_events.labels(_gpu_label(g.index))

    def reconciled(self, trigger: Trigger, result: ReconcileResult) -> None:
        self.reconciles.labels(trigger.value, _RESULT_OF[result.worst()]).inc()
        self.reconcile_duration.observe(max(0.0, result.duration_seconds))
        for g in result.gpus:
            label = _gpu_label(g.index)
            if g.outcome in _UNSETTLED:
                self.apply_errors.labels(label, apply_error_reason(g.outcome, g.error)).inc()
            if g.reset:
                ok = g.outcome not in (GpuOutcome.FAILED, GpuOutcome.REBOOT_REQUIRED)
                self.resets.labels(label, "success" if ok else "failure").inc()
            if g.mutations:
                self.mutations.labels(label).inc(g.mutations)
        self._events += 1

    def reconcile_failed(self, trigger: Trigger, reason: str) -> None:
        # No GPU result and no duration worth a histogram sample: the count is what
        # the reconcile-failing alert needs.
        self.reconciles.labels(trigger.value, "failed").inc()
        self._events += 1

    def reload_attempted(self, ok: bool) -> None:
        self.reloads.labels("success" if ok else "failure").inc()
        self._events += 1

    def drifted(self, gpu: int) -> None:
        self.drift_events.labels(_gpu_label(gpu)).inc()
        self._events += 1


def apply_error_reason(outcome: GpuOutcome, error: str | None) -> str:
    """The bounded ``reason`` label: the NVML error name or migd reason word when the
    result carries one, else the outcome (``failed``, ``blocked``, ``reboot_required``)."""
    if error and re.match(_REASON_RE, error):
        return error
    return outcome.value


# ---------------------------------------------------------------------------
# The endpoint inside `migd run`
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsEndpoint:
    """A running endpoint: the observer to hand the daemon and the server to stop."""

    observer: MetricsObserver
    server: MetricsServer


def start_endpoint(
    settings: MetricsSettings,
    address: str | None = None,
    *,
    listener: socket.socket | None = None,
    observer: MetricsObserver | None = None,
) -> MetricsEndpoint | None:
    """Starts the endpoint ``settings`` ask for; ``address`` (``--metrics-address``)
    overrides theirs, ``""`` disabling it. None when disabled or when it cannot start.
    ``listener``: the socket :func:`migd.daemon.listen.listen_for_metrics` bound for it;
    ``observer``: the one to serve (one that already heard the daemon), else a new one.

    A port already taken or a bad certificate is logged as an error and the daemon runs
    on without metrics: keeping the GPUs right matters more than reporting on them
    (and Prometheus's ``up`` shows the endpoint missing). TLS is never dropped to serve
    in the clear instead.
    """
    address = endpoint_address(settings, address)
    if not address:
        if listener is not None:
            listener.close()
        return None
    observer = observer if observer is not None else MetricsObserver()
    try:
        server = MetricsServer(
            address,
            settings.tls,
            registry=observer.registry,
            version=observer.version,
            listener=listener,
        )
        server.start()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        log.error("metrics endpoint on %s not started: %s", address, exc)
        return None
    return MetricsEndpoint(observer, server)
