"""The change orchestrator: GPU client units, refreshes and labels around a change, with a
fake systemctl.

The fake is a small script that keeps each unit's state in a file and logs every call,
so the tests see exactly which systemctl commands migd ran, in which order.
"""

from __future__ import annotations

import shlex
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from geometry_support import H200, add_process, apply_text, config_text, make_node, snapshot
from paths import anchor

from migd.core.layout import NodeSnapshot
from migd.core.planner import plan_node
from migd.core.selection import desired_layouts
from migd.daemon.loop import load_selected
from migd.errors import ConfigError
from migd.formats.clients_file import load_clients_file, parse_clients_file
from migd.formats.config_file import parse_config
from migd.gpu.executor import GpuOutcome, GpuResult, ReconcileOptions, ReconcileResult
from migd.gpu.nvml import NvmlAdapter
from migd.node.change import (
    Change,
    ChangeAborted,
    ChangeReport,
    NodeServices,
    Systemctl,
    apply_with_services,
    around_change,
)
from migd.node.hooks import HookContext

CONTEXT = HookContext("all-balanced", "/etc/migd/config.yaml")
EMPTY = NodeSnapshot(())
UNITS = ("nvsm.service", "nvidia-dcgm.service", "dcgm-exporter.service", "slurmd.service")

FAKE_SYSTEMCTL = """\
#!/bin/sh
# A unit's file holds its state, optionally ":refuses-VERB" (that verb fails for it).
state={state}
echo "$*" >> "$state/calls.log"
verb=$1; shift
[ "$1" = --no-block ] && shift
[ "$1" = -- ] && shift
get() {{ if [ -f "$state/$1" ]; then cat "$state/$1"; else echo inactive; fi; }}
if [ "$verb" = is-active ]; then
    rc=0
    for unit in "$@"; do
        now=$(get "$unit"); now=${{now%%:*}}; echo "$now"; [ "$now" = active ] || rc=3
    done
    exit $rc
fi
unit=$1; now=$(get "$unit"); quirk=""
case $now in *:*) quirk=":${{now#*:}}"; now=${{now%%:*}};; esac
if [ "$quirk" = ":refuses-$verb" ]; then echo "Job for $unit failed." >&2; exit 1; fi
case $verb in stop) now=inactive;; start) now=active;; esac
printf '%s%s' "$now" "$quirk" > "$state/$unit"
"""


class FakeSystemd:
    """Unit states in files, every systemctl call in ``calls.log``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(exist_ok=True)
        self.script = root / "systemctl"
        self.script.write_text(FAKE_SYSTEMCTL.format(state=shlex.quote(str(root))))
        self.script.chmod(0o755)
        self.systemctl = Systemctl((str(self.script),), timeout=30)

    def set(self, unit: str, state: str) -> None:
        (self.root / unit).write_text(state)

    def state(self, unit: str) -> str:
        path = self.root / unit
        return path.read_text().partition(":")[0] if path.exists() else "inactive"

    def calls(self) -> list[str]:
        log = self.root / "calls.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def systemd(tmp_path: Path) -> FakeSystemd:
    fake = FakeSystemd(tmp_path / "systemd")
    fake.set("nvidia-dcgm.service", "active")
    fake.set("slurmd.service", "active")
    fake.set("nvsm.service", "failed")  # not running: left alone
    return fake


def services(systemd: FakeSystemd, **kwargs: object) -> NodeServices:
    return NodeServices(clients=UNITS, systemctl=systemd.systemctl, timeout=30, **kwargs)  # type: ignore[arg-type]


def result_of(outcome: GpuOutcome, mutations: int = 4) -> ReconcileResult:
    return ReconcileResult("all-balanced", (GpuResult(0, outcome, mutations=mutations),), (), EMPTY)


MODE_CHANGE = Change(EMPTY, (0,), mode=True, instances=True, destroys=True)
DESTROYS = Change(EMPTY, (0,), instances=True, destroys=True)
CREATES_ONLY = Change(EMPTY, (0,), instances=True)
NOTHING = Change(EMPTY)

STOPS = ["is-active -- " + " ".join(UNITS), "stop -- slurmd.service", "stop -- nvidia-dcgm.service"]
STARTS = ["start --no-block -- nvidia-dcgm.service", "start --no-block -- slurmd.service"]


class Act:
    """The reconcile stand-in: notes which units were up while it ran."""

    def __init__(self, systemd: FakeSystemd, result: ReconcileResult) -> None:
        self.systemd = systemd
        self.result = result
        self.seen: dict[str, str] | None = None

    def __call__(self) -> ReconcileResult:
        self.seen = {u: self.systemd.state(u) for u in UNITS}
        return self.result


# ---------------------------------------------------------------------------
# The gpu-clients file
# ---------------------------------------------------------------------------


def test_the_gpu_operator_clients_file_parses_unchanged(tmp_path: Path) -> None:
    configmap = yaml.safe_load(anchor("gpu-operator-0410_configmap.yaml").read_text())
    path = tmp_path / "clients.yaml"
    path.write_text(configmap["data"]["clients.yaml"])
    assert load_clients_file(str(path)) == (
        "nvsm.service",
        "nvsm-mqtt.service",
        "nvsm-core.service",
        "nvsm-api-gateway.service",
        "nvsm-notifier.service",
        "nv_peer_mem.service",
        "nvidia-dcgm.service",
        "dcgm.service",
        "dcgm-exporter.service",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("systemd-services: [a.service]\n", "clients.yaml:1:1: version is missing"),
        ("version: v2\n", "clients.yaml:1:10: version: unknown version 'v2'"),
        (
            "version: v1\nsystemd_services: [a.service]\n",
            "clients.yaml:2:1: systemd_services: unknown key 'systemd_services'",
        ),
        (
            "version: v1\nsystemd-services:\n  - ok.service\n  - bad unit\n",
            "clients.yaml:4:5: systemd-services[1]: 'bad unit' is not a systemd unit name",
        ),
        ("version: v1\nsystemd-services: dcgm.service\n", "clients.yaml:2:19: systemd-services"),
    ],
)
def test_invalid_clients_files_say_where(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_clients_file(text.encode(), "clients.yaml")
    assert any(expected in str(p) for p in info.value.problems), info.value.problems


def test_empty_clients_files_name_no_unit() -> None:
    assert parse_clients_file(b"", "c.yaml") == ()
    assert parse_clients_file(b"version: v1\nsystemd-services: []\n", "c.yaml") == ()


def test_services_come_from_the_settings_and_the_files(tmp_path: Path) -> None:
    clients = tmp_path / "clients.yaml"
    clients.write_text(
        "version: v1\nsystemd-services: [nvsm.service, dcgm.service, dcgm-exporter.service]\n"
    )
    hooks = tmp_path / "hooks.yaml"
    hooks.write_text("version: v1\nhooks:\n  apply-start:\n  - command: /bin/true\n")
    text = textwrap.dedent(
        f"""\
        version: v1
        mig-configs:
          off: [{{devices: all, mig-enabled: false}}]
        settings:
          command-timeout: 30s
          hooks-file: {hooks}
          gpu-clients:
            units: [slurmd.service, dcgm.service]
            file: {clients}
          device-plugin:
            strategy: single
            units: [nvidia-device-plugin.service]
          cdi-refresh-command: [nvidia-ctk, cdi, generate, --output=/var/run/cdi/nvidia.yaml]
          mig-caps-command: [nvidia-smi, mig, -lgi]
          nfd: {{path: /etc/kubernetes/node-feature-discovery/features.d/migd}}
        """
    )
    settings = parse_config(text.encode(), "config.yaml").settings
    found = NodeServices.from_settings(settings)
    assert found.clients[:3] == ("slurmd.service", "dcgm.service", "nvsm.service")
    assert found.clients[3:] == ("dcgm-exporter.service",)  # dcgm.service once
    assert [h.label for h in found.hooks.hooks] == ["apply-start[0]"]
    assert found.hooks.source == str(hooks)
    assert found.device_plugin_units == ("nvidia-device-plugin.service",)
    assert found.cdi_refresh_command == (
        "nvidia-ctk",
        "cdi",
        "generate",
        "--output=/var/run/cdi/nvidia.yaml",
    )
    assert found.mig_caps_command == ("nvidia-smi", "mig", "-lgi")
    assert found.nfd_path == "/etc/kubernetes/node-feature-discovery/features.d/migd"
    assert found.strategy == "single"
    assert found.timeout == found.systemctl.timeout == 30.0
    minimal = NodeServices.from_settings(parse_config(b"", "empty.yaml").settings)
    assert minimal == NodeServices(timeout=120.0, systemctl=Systemctl(timeout=120.0))


def test_a_bad_hooks_or_clients_file_is_refused_with_the_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v1\nhooks:\n  apply-start: /bin/true\n")
    text = f"version: v1\nsettings:\n  hooks-file: {bad}\n"
    with pytest.raises(ConfigError, match="the apply-start hooks must be a list"):
        NodeServices.from_settings(parse_config(text.encode(), "c.yaml").settings)
    text = f"version: v1\nsettings:\n  gpu-clients: {{file: {tmp_path / 'absent.yaml'}}}\n"
    with pytest.raises(ConfigError, match="cannot read the file"):
        NodeServices.from_settings(parse_config(text.encode(), "c.yaml").settings)


# ---------------------------------------------------------------------------
# Stopping and starting GPU client units
# ---------------------------------------------------------------------------


def test_only_running_units_are_stopped_in_reverse_and_started_again_in_order(
    systemd: FakeSystemd,
) -> None:
    systemd.set("dcgm-exporter.service", "deactivating")  # going down by another hand
    act = Act(systemd, result_of(GpuOutcome.APPLIED))
    report = around_change(services(systemd), MODE_CHANGE, act, context=CONTEXT, post_boot=False)
    assert systemd.calls() == STOPS + STARTS
    assert act.seen == {
        "nvsm.service": "failed",
        "nvidia-dcgm.service": "inactive",
        "dcgm-exporter.service": "deactivating",
        "slurmd.service": "inactive",
    }
    assert report.stopped == ("slurmd.service", "nvidia-dcgm.service")
    assert report.started == ("nvidia-dcgm.service", "slurmd.service")
    assert systemd.state("slurmd.service") == systemd.state("nvidia-dcgm.service") == "active"
    assert systemd.state("nvsm.service") == "failed"
    assert report.lines() == [
        "stopped GPU client units: slurmd.service, nvidia-dcgm.service",
        "started GPU client units again: nvidia-dcgm.service, slurmd.service",
    ]


def test_destroying_instances_stops_the_clients_too(systemd: FakeSystemd) -> None:
    around_change(
        services(systemd),
        DESTROYS,
        Act(systemd, result_of(GpuOutcome.APPLIED)),
        context=CONTEXT,
        post_boot=False,
    )
    assert systemd.calls() == STOPS + STARTS


@pytest.mark.parametrize("change", [CREATES_ONLY, NOTHING], ids=["creates-only", "nothing"])
def test_a_change_that_needs_no_stop_stops_nothing(systemd: FakeSystemd, change: Change) -> None:
    act = Act(systemd, result_of(GpuOutcome.APPLIED if change.any else GpuOutcome.NOOP))
    report = around_change(services(systemd), change, act, context=CONTEXT, post_boot=False)
    assert systemd.calls() == []
    assert act.seen is not None and act.seen["slurmd.service"] == "active"
    assert report.stopped == report.started == ()


@pytest.mark.parametrize("outcome", [GpuOutcome.FAILED, GpuOutcome.BLOCKED])
def test_a_failed_change_still_starts_the_units_again(
    systemd: FakeSystemd, outcome: GpuOutcome
) -> None:
    report = around_change(
        services(systemd),
        MODE_CHANGE,
        Act(systemd, result_of(outcome)),
        context=CONTEXT,
        post_boot=False,
    )
    assert systemd.calls() == STOPS + STARTS
    assert report.result is not None and report.result.worst() is outcome


def test_a_change_that_raises_still_starts_the_units_again(systemd: FakeSystemd) -> None:
    def explode() -> ReconcileResult:
        raise RuntimeError("NVML went away")

    with pytest.raises(RuntimeError, match="NVML went away"):
        around_change(services(systemd), MODE_CHANGE, explode, context=CONTEXT, post_boot=True)
    assert systemd.calls() == STOPS + STARTS


def test_a_unit_that_will_not_stop_aborts_the_change_and_is_started_again(
    systemd: FakeSystemd,
) -> None:
    systemd.set("nvidia-dcgm.service", "active:refuses-stop")
    act = Act(systemd, result_of(GpuOutcome.APPLIED))
    with pytest.raises(ChangeAborted) as info:
        around_change(services(systemd), MODE_CHANGE, act, context=CONTEXT, post_boot=True)
    assert act.seen is None  # no GPU touched
    assert info.value.reason == (
        "cannot stop GPU client unit nvidia-dcgm.service: exited with status 1: "
        "Job for nvidia-dcgm.service failed."
    )
    assert systemd.calls() == STOPS + STARTS
    assert info.value.report.stopped == ("slurmd.service", "nvidia-dcgm.service")


def test_without_systemctl_the_change_is_aborted(tmp_path: Path) -> None:
    absent = NodeServices(clients=UNITS, systemctl=Systemctl((str(tmp_path / "nope"),), 5))
    act = Act(FakeSystemd(tmp_path / "s"), result_of(GpuOutcome.APPLIED))
    with pytest.raises(ChangeAborted, match="cannot tell which GPU client units run"):
        around_change(absent, MODE_CHANGE, act, context=CONTEXT, post_boot=False)
    assert act.seen is None


def test_a_unit_that_will_not_start_is_reported_without_changing_the_outcome(
    systemd: FakeSystemd,
) -> None:
    systemd.set("slurmd.service", "active:refuses-start")
    act = Act(systemd, result_of(GpuOutcome.APPLIED))
    report = around_change(services(systemd), MODE_CHANGE, act, context=CONTEXT, post_boot=False)
    assert report.result is act.result and report.result.exit_code == 0
    assert report.started == ("nvidia-dcgm.service",)
    assert report.problems == (
        "cannot start GPU client unit slurmd.service again: exited with status 1: "
        "Job for slurmd.service failed.",
    )


# ---------------------------------------------------------------------------
# After a post-boot change
# ---------------------------------------------------------------------------


def recorder(log: Path, name: str, code: int = 0) -> tuple[str, ...]:
    script = f"import sys; open({str(log)!r}, 'a').write({name!r} + '\\n'); sys.exit({code})"
    return (sys.executable, "-c", script)


def refreshing(systemd: FakeSystemd, log: Path, cdi_code: int = 0) -> NodeServices:
    return services(
        systemd,
        mig_caps_command=recorder(log, "mig-caps"),
        cdi_refresh_command=recorder(log, "cdi", cdi_code),
        device_plugin_units=("nvidia-device-plugin.service", "gfd.service"),
    )


def test_after_a_post_boot_change_caps_then_cdi_then_the_device_plugin(
    systemd: FakeSystemd, tmp_path: Path
) -> None:
    log = tmp_path / "refresh.log"
    report = around_change(
        refreshing(systemd, log),
        CREATES_ONLY,
        Act(systemd, result_of(GpuOutcome.APPLIED)),
        context=CONTEXT,
        post_boot=True,
    )
    assert log.read_text() == "mig-caps\ncdi\n"
    assert systemd.calls() == [
        "try-restart --no-block -- nvidia-device-plugin.service",
        "try-restart --no-block -- gfd.service",
    ]
    assert [step.what for step in report.refresh] == [
        "mig-caps-command",
        "cdi-refresh-command",
        "try-restart nvidia-device-plugin.service",
        "try-restart gfd.service",
    ]
    assert all(step.ok for step in report.refresh) and not report.problems


def test_a_rolled_back_gpu_counts_as_changed(systemd: FakeSystemd, tmp_path: Path) -> None:
    log = tmp_path / "refresh.log"
    around_change(
        refreshing(systemd, log),
        CREATES_ONLY,
        Act(systemd, result_of(GpuOutcome.FAILED, 6)),
        context=CONTEXT,
        post_boot=True,
    )
    assert log.read_text() == "mig-caps\ncdi\n"


@pytest.mark.parametrize(
    ("change", "result", "post_boot"),
    [
        (CREATES_ONLY, result_of(GpuOutcome.APPLIED), False),  # before the first READY
        (CREATES_ONLY, result_of(GpuOutcome.BLOCKED, 0), True),  # nothing was touched
        (NOTHING, result_of(GpuOutcome.NOOP, 0), True),
    ],
    ids=["boot", "untouched", "noop"],
)
def test_no_refresh_without_a_post_boot_change(
    systemd: FakeSystemd, tmp_path: Path, change: Change, result: ReconcileResult, post_boot: bool
) -> None:
    log = tmp_path / "refresh.log"
    report = around_change(
        refreshing(systemd, log), change, Act(systemd, result), context=CONTEXT, post_boot=post_boot
    )
    assert not log.exists() and systemd.calls() == [] and report.refresh == ()


def test_a_failed_refresh_is_reported_and_the_rest_still_runs(
    systemd: FakeSystemd, tmp_path: Path
) -> None:
    log = tmp_path / "refresh.log"
    systemd.set("gfd.service", "active:refuses-try-restart")
    report = around_change(
        refreshing(systemd, log, cdi_code=2),
        CREATES_ONLY,
        Act(systemd, result_of(GpuOutcome.APPLIED)),
        context=CONTEXT,
        post_boot=True,
    )
    assert report.result is not None and report.result.exit_code == 0
    assert [step.ok for step in report.refresh] == [True, False, True, False]
    assert report.problems == (
        "cdi-refresh-command: exited with status 2",
        "try-restart gfd.service: exited with status 1: Job for gfd.service failed.",
    )
    assert report.lines()[-1].startswith("after the change: mig-caps-command; cdi-refresh")


# ---------------------------------------------------------------------------
# NFD labels and the strategy check around a change
# ---------------------------------------------------------------------------


def test_labels_say_pending_during_the_change_then_the_outcome(
    systemd: FakeSystemd, tmp_path: Path
) -> None:
    path = tmp_path / "features.d" / "migd"
    during: list[str] = []

    def act() -> ReconcileResult:
        during.append(path.read_text())
        return result_of(GpuOutcome.APPLIED)

    report = around_change(
        services(systemd, nfd_path=str(path), strategy="none"),
        CREATES_ONLY,
        act,
        context=CONTEXT,
        post_boot=False,
    )
    assert "nvidia.com/mig.config.state=pending\n" in during[0]
    assert "migd/in-sync=false\n" in during[0]
    final = path.read_text()
    assert "nvidia.com/mig.config=all-balanced\n" in final
    assert "nvidia.com/mig.config.state=success\n" in final
    assert "migd/in-sync=true\n" in final
    assert "migd/strategy-compatible=true\n" in final
    assert report.strategy is not None and report.strategy.strategy == "none"


def test_an_aborted_change_is_labelled_failed(systemd: FakeSystemd, tmp_path: Path) -> None:
    path = tmp_path / "migd"
    systemd.set("slurmd.service", "active:refuses-stop")
    with pytest.raises(ChangeAborted):
        around_change(
            services(systemd, nfd_path=str(path)),
            MODE_CHANGE,
            Act(systemd, result_of(GpuOutcome.APPLIED)),
            context=CONTEXT,
            post_boot=False,
        )
    assert "nvidia.com/mig.config.state=failed\n" in path.read_text()


# ---------------------------------------------------------------------------
# What a change is, from real plans on a simulated node
# ---------------------------------------------------------------------------


def change_for(text: str, name: str, options: ReconcileOptions | None = None) -> Change:
    now = snapshot()
    desired = desired_layouts(now, parse_config(text.encode(), "c.yaml").entries(name))
    options = options or ReconcileOptions()
    return Change.of(plan_node(now, desired, force=options.force, mode_only=options.mode_only))


LAYOUTS = config_text({"off": "", "small": "1g.18gb=7", "mixed": "1g.18gb=3,3g.71gb=1"})


def test_planned_changes_on_a_simulated_node(tmp_path: Path) -> None:
    make_node(tmp_path / "node.json", [H200, H200])
    assert change_for(LAYOUTS, "off") == Change(snapshot())  # MIG already off
    on = change_for(LAYOUTS, "small")
    assert (on.gpus, on.mode, on.instances, on.destroys) == ((0, 1), True, True, False)
    assert on.stops_clients
    mode_only = change_for(LAYOUTS, "small", ReconcileOptions(mode_only=True))
    assert (mode_only.mode, mode_only.instances) == (True, False)
    apply_text(config_text({"empty": ","}), "empty")  # MIG on, no instances
    creates = change_for(LAYOUTS, "small")
    assert (creates.mode, creates.instances, creates.destroys) == (False, True, False)
    assert not creates.stops_clients
    apply_text(LAYOUTS, "small")
    reshape = change_for(LAYOUTS, "mixed")
    assert (reshape.mode, reshape.instances, reshape.destroys) == (False, True, True)
    assert change_for(LAYOUTS, "small").gpus == ()


def test_a_blocked_gpu_is_not_part_of_the_change_unless_forced(tmp_path: Path) -> None:
    state = make_node(tmp_path / "node.json", [H200])
    apply_text(LAYOUTS, "small")
    gi = snapshot().gpu(0).instances[0]
    add_process(state, 4242, 0, gi.id)
    assert change_for(LAYOUTS, "off").gpus == ()
    forced = change_for(LAYOUTS, "off", ReconcileOptions(force=True))
    assert forced.gpus == (0,) and forced.mode and forced.destroys


def test_apply_with_services_on_a_simulated_node(systemd: FakeSystemd, tmp_path: Path) -> None:
    make_node(tmp_path / "node.json", [H200, H200])
    config = parse_config(LAYOUTS.encode(), "config.yaml")
    svc = services(systemd)
    lines: list[str] = []
    options = ReconcileOptions(progress=lines.append)
    with NvmlAdapter.open() as nvml:
        first = apply_with_services(nvml, config, "small", options, svc, post_boot=True)
        assert isinstance(first, ChangeReport) and first.result is not None
        assert first.result.exit_code == 0 and first.change.mode
        assert systemd.calls() == STOPS + STARTS
        assert "stopping GPU client unit slurmd.service" in lines
        again = apply_with_services(nvml, config, "small", options, svc, post_boot=True)
        assert again.result is not None and again.result.worst() is GpuOutcome.NOOP
        assert systemd.calls() == STOPS + STARTS  # nothing to do: nothing stopped
    assert snapshot().gpu(1).instances


def test_the_daemon_refuses_a_config_whose_hooks_file_is_bad(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks.yaml"
    hooks.write_text("version: v1\nhooks:\n  apply-start:\n  - command: /bin/true\n")
    config = tmp_path / "config.yaml"
    config.write_text(LAYOUTS + f"settings:\n  hooks-file: {hooks}\n")
    loaded = load_selected(str(config), "small", {})
    assert [h.label for h in loaded.services.hooks.hooks] == ["apply-start[0]"]
    hooks.write_text("version: v1\nhooks:\n  apply-start:\n  - env: {A: b}\n")
    with pytest.raises(ConfigError, match=r"hooks.yaml:4:5: hooks.apply-start\[0\]"):
        load_selected(str(config), "small", {})
