"""migd under a real systemd 252: the shipped unit, installed by ``migd install-unit``.

Each test boots systemd as PID 1 of a namespace of its own (``systemd_harness``) with
migd.service on a simulated node and a stand-in kubelet.service ordered after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_support import (
    BALANCED,
    SMALL,
    all_hold,
    config_text,
    destroy_one_instance,
    sim,
    wait_for,
    write_atomically,
)
from systemd_harness import (
    Systemd,
    installed_unit,
    python_paths,
    requires_systemd,
    scratch_directory,
)

pytestmark = requires_systemd()


# Records the moment it started and what the GPUs held then, as kubelet would find them.
KUBELET = """\
import json, subprocess, sys, time
started = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
shown = subprocess.run(
    [sys.executable, "-m", "migd", "sim", "show", sys.argv[1], "--json"],
    capture_output=True, text=True, check=True,
).stdout
with open(sys.argv[2], "w") as f:
    json.dump({"monotonic_usec": started, "node": json.loads(shown)}, f)
"""

KUBELET_UNIT = """\
[Unit]
Description=stand-in for kubelet: records what the GPUs held when it started
Requires=migd.service
After=migd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={python} {script} {state} {record}
"""

# Test timing for the shipped unit: a short watchdog, quick restarts, no core files.
DROP_IN = """\
[Service]
WatchdogSec=3s
RestartSec=500ms
LimitCORE=0
"""


@dataclass
class Machine:
    directory: Path
    systemd: Systemd

    @property
    def state(self) -> Path:
        return self.directory / "node.json"

    @property
    def config(self) -> Path:
        return self.directory / "config.yaml"

    def status(self) -> str:
        return self.systemctl("status", "migd").stdout

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.systemd.systemctl(*args)

    def wait_ready(self, what: str = "migd active and ready", timeout: float = 30) -> None:
        def ready() -> bool:
            shown = self.systemd.show("migd", "ActiveState", "StatusText")
            return shown.get("ActiveState") == "active" and shown.get("StatusText", "").startswith(
                "ready:"
            )

        wait_for(ready, what, timeout=timeout, interval=0.2)


@pytest.fixture
def machine() -> Iterator[Callable[..., Machine]]:
    made: list[Machine] = []

    def boot(faults: tuple[tuple[str, ...], ...] = ()) -> Machine:
        directory = scratch_directory("systemd-test")
        state = directory / "node.json"
        sim("init", str(state), "--gpu", "H200x2")
        for fault in faults:
            sim("fault", str(state), *fault)
        (directory / "config.yaml").write_text(config_text(drift="1s"))
        unit = installed_unit(state, directory / "config.yaml", directory / "install")
        (directory / "kubelet.py").write_text(KUBELET)
        systemd = Systemd(
            directory,
            {
                "migd.service": unit,
                "migd.service.d/test.conf": DROP_IN,
                "kubelet.service": KUBELET_UNIT.format(
                    python=sys.executable,
                    script=directory / "kubelet.py",
                    state=state,
                    record=directory / "kubelet.json",
                ),
            },
            keep=python_paths(),
        )
        m = Machine(directory, systemd)
        made.append(m)
        systemd.boot()
        return m

    yield boot
    for m in made:
        m.systemd.close()


def test_kubelet_starts_only_once_migd_is_ready_and_stop_is_clean(
    machine: Callable[..., Machine],
) -> None:
    # Slow instance creation: the apply takes a while, so an early READY would show.
    slow = ("--call", "nvmlDeviceCreateGpuInstanceWithPlacement", "--latency", "150")
    host_dirs = {d: Path(d).exists() for d in ("/etc/migd", "/var/lib/migd", "/run/migd")}
    m = machine(faults=(slow,))
    record = m.directory / "kubelet.json"
    wait_for(record.exists, "the stand-in kubelet started", timeout=30, interval=0.2)
    seen = json.loads(record.read_text())
    for gpu in seen["node"]["gpus"]:
        held: dict[str, int] = {}
        for gi in gpu["gpu_instances"]:
            held[gi["profile"]] = held.get(gi["profile"], 0) + 1
        assert held == BALANCED, (gpu["index"], held)
    shown = m.systemd.show("migd", "ActiveEnterTimestampMonotonic", "Type", "NotifyAccess")
    assert int(shown["ActiveEnterTimestampMonotonic"]) <= seen["monotonic_usec"]
    assert shown["Type"] == "notify"
    assert 'Status: "ready: balanced, 2/2 GPUs in sync"' in m.status()
    # The unit's directories were made inside the namespace, not on this machine.
    assert m.systemd.run("test", "-d", "/etc/migd").returncode == 0
    assert {d: Path(d).exists() for d in host_dirs} == host_dirs

    stopped = m.systemctl("stop", "migd")
    assert stopped.returncode == 0, stopped.stderr
    shown = m.systemd.show("migd", "ActiveState", "Result", "ExecMainStatus")
    assert shown == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert "migd exits with status 0" in m.systemd.journal("-u", "migd")


def test_systemctl_reload_succeeds_on_a_good_edit_and_fails_on_a_bad_one(
    machine: Callable[..., Machine],
) -> None:
    m = machine()
    m.wait_ready()
    write_atomically(m.config, config_text("small", drift="1s"))
    reloaded = m.systemctl("reload", "migd")
    assert reloaded.returncode == 0, reloaded.stderr
    assert all_hold(m.state, SMALL)
    assert 'Status: "ready: small, 2/2 GPUs in sync"' in m.status()

    bad = config_text("balanced", drift="1s").replace('"2g.35gb": 1', '"2g.35gb": [1]')
    line = next(i for i, text in enumerate(bad.splitlines(), 1) if "[1]" in text)
    write_atomically(m.config, bad)
    refused = m.systemctl("reload", "migd")
    assert refused.returncode != 0
    status = m.status()
    assert f"config refused, keeping small: {m.config}:{line}:" in status, status
    assert m.systemd.show("migd", "ActiveState") == {"ActiveState": "active"}
    assert all_hold(m.state, SMALL)
    # The problem is logged at priority err: journald kept the level of each line.
    errors = m.systemd.journal("-u", "migd", "-p", "err")
    assert f"{m.config}:{line}:" in errors
    assert "reloading" not in errors  # info lines are not errors


def test_a_hung_nvml_call_gets_migd_restarted_by_the_watchdog(
    machine: Callable[..., Machine],
) -> None:
    m = machine()
    m.wait_ready()
    # The next drift check hangs in NVML for longer than the whole test.
    sim("fault", str(m.state), "--call", "nvmlDeviceGetCount_v2", "--hang", "120", "--count", "1")
    wait_for(
        lambda: "withholding watchdog pings" in m.systemd.journal("-u", "migd"),
        "the hang noticed",
        timeout=10,
    )
    # While migd is stuck, an instance disappears behind its back.
    destroy_one_instance(m.state, 1)
    wait_for(
        lambda: int(m.systemd.show("migd", "NRestarts")["NRestarts"]) >= 1,
        "a watchdog restart",
        timeout=20,
    )
    assert "Watchdog timeout" in m.systemd.journal("-u", "migd")
    # The new daemon converges: the instance is back and it reports ready.
    m.wait_ready("migd ready again after the restart")
    assert all_hold(m.state, BALANCED)


def test_nvidia_mig_parted_apply_is_refused_while_migd_service_runs(
    machine: Callable[..., Machine],
) -> None:
    m = machine()
    m.wait_ready()
    main_pid = m.systemd.show("migd", "MainPID")["MainPID"]
    before = sim("show", str(m.state), "--json")
    # As a GPU Operator's mig-manager or an old script would call it.
    mig_parted = Path(sys.executable).parent / "nvidia-mig-parted"
    refused = m.systemd.run(
        "env", f"MIGD_SIMULATE={m.state}",
        str(mig_parted), "apply", "-f", str(m.config), "-c", "small",
    )  # fmt: skip
    assert refused.returncode == 5, refused.stdout + refused.stderr
    assert f"migd daemon (pid {main_pid}) owns this node" in refused.stderr
    assert "systemctl reload migd" in refused.stderr
    assert sim("show", str(m.state), "--json") == before
    assert 'Status: "ready: balanced, 2/2 GPUs in sync"' in m.status()
