"""The fleet roll-out (ansible/migd.yml) on four nodes, each a real systemd with sshd
and migd on simulated GPUs of its own (fleet_support.py), reached by Ansible over SSH
on 127.0.0.2-5.

The nodes are booted once for the module, and the scenarios run in file order on them,
each starting from where the one before left the fleet: a refused inventory on new
nodes, the first roll-out (group layouts, one node's own, a passthrough node that
needs a reboot), a second run, check mode, a re-layout that stops at a busy node, and
a reboot that does not take. Each asserts what an operator sees: the exit status, the
summary table and messages, each node's simulated GPUs, how many mutating NVML calls
each node's GPUs saw, and how often each node rebooted.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_support import Fleet, Host, NodeSpec, unavailable
from systemd_harness import requires_systemd, scratch_directory

pytestmark = [
    *requires_systemd(overlay_root=True),
    pytest.mark.fleet,
    pytest.mark.skipif(unavailable() is not None, reason=f"fleet: {unavailable()}"),
]

NODES = (
    NodeSpec("gpu01", "127.0.0.2", ("H200x8",)),
    NodeSpec("gpu02", "127.0.0.3", ("H100-SXM5-80GBx2",)),
    NodeSpec("gpu03", "127.0.0.4", ("A100-SXM4-40GBx4",), passthrough=True),
    NodeSpec("gpu04", "127.0.0.5", ("A100-SXM4-40GBx2",)),
)

# The cluster-wide layouts (memory-agnostic names: one config serves every model).
CONFIGS: dict[str, Any] = {
    "all-disabled": [{"devices": "all", "mig-enabled": False}],
    "all-balanced": [
        {"devices": "all", "mig-enabled": True, "mig-devices": {"1g": 2, "2g": 1, "3g": 1}}
    ],
    "all-1g": [{"devices": "all", "mig-enabled": True, "mig-devices": {"1g": 7}}],
    "half-1g": [
        {"devices": [0, 1, 2, 3], "mig-enabled": False},
        {"devices": [4, 5, 6, 7], "mig-enabled": True, "mig-devices": {"1g": 7}},
    ],
    "all-8": [{"devices": "all", "mig-enabled": True, "mig-devices": {"1g": 8}}],
}

# What each node's GPUs hold after the first roll-out.
H200_HALF = {**{i: {} for i in range(4)}, **{i: {"1g.18gb": 7} for i in range(4, 8)}}
H100_BALANCED = {i: {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1} for i in range(2)}
A100_1G = {"1g.5gb": 7}
A100_BALANCED = {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}

# Stand-ins for a drain and an uncordon: they log on the node when they run.
PRE_CHANGE = """\
- name: Drain the node (test stand-in)
  ansible.builtin.shell: echo pre >> /root/rollout.log
  changed_when: true
"""
POST_CHANGE = PRE_CHANGE.replace("Drain", "Uncordon").replace("pre", "post")

BUSY_PID = 31337


@pytest.fixture(scope="module")
def fleet(package: Path) -> Iterator[Fleet]:
    made = Fleet(scratch_directory("fleet"), NODES, package)
    try:
        yield made.boot()
    finally:
        made.close()


def inventory(
    fleet: Fleet,
    hopper: str,
    ampere: str,
    *,
    own: dict[str, str] | None = None,
    configs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Two groups of nodes, each selecting a layout (gpu01/gpu02 ``hopper``, gpu03/gpu04
    ``ampere``); ``own`` gives single nodes a layout of their own."""
    hosts = {h.name: fleet.host_vars(h) for h in fleet.hosts}
    for name, selected in (own or {}).items():
        hosts[name]["migd_selected_config"] = selected
    tasks = fleet.directory / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "drain.yml").write_text(PRE_CHANGE)
    (tasks / "uncordon.yml").write_text(POST_CHANGE)
    return {
        "all": {
            "vars": {
                **fleet.connection_vars(),
                "migd_configs": configs or CONFIGS,
                "migd_reboot": True,
                "migd_pre_change_tasks": str(tasks / "drain.yml"),
                "migd_post_change_tasks": str(tasks / "uncordon.yml"),
            },
            "children": {
                "migd_nodes": {
                    "children": {
                        "hopper": {
                            "vars": {
                                "migd_selected_config": hopper,
                                "migd_gpu_models": ["H200", "H100-SXM5-80GB"],
                            },
                            "hosts": {n: hosts[n] for n in ("gpu01", "gpu02")},
                        },
                        "ampere": {
                            "vars": {
                                "migd_selected_config": ampere,
                                "migd_gpu_models": ["A100-SXM4-40GB"],
                            },
                            "hosts": {n: hosts[n] for n in ("gpu03", "gpu04")},
                        },
                    }
                }
            },
        }
    }


def first_rollout(fleet: Fleet) -> dict[str, Any]:
    return inventory(fleet, "all-balanced", "all-1g", own={"gpu01": "half-1g"})


def relayout(fleet: Fleet) -> dict[str, Any]:
    return inventory(fleet, "all-1g", "all-balanced")


def calls(fleet: Fleet) -> dict[str, int]:
    return {h.name: h.mutating_calls() for h in fleet.hosts}


def configs_on(fleet: Fleet) -> dict[str, str | None]:
    return {h.name: h.read("/etc/migd/config.yaml") for h in fleet.hosts}


def changes_logged(host: Host) -> list[str]:
    return (host.read("/root/rollout.log") or "").split()


def reload_generation(host: Host) -> int:
    return int(json.loads(host.must("migd", "status", "--json"))["reload_generation"])


def scrape(host: Host) -> str:
    url = f"http://{host.address}:{host.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


# ---------------------------------------------------------------------------------------


def test_an_invalid_layout_is_refused_before_any_node_is_touched(fleet: Fleet) -> None:
    typo = {**CONFIGS, "all-1g": [{"devices": "all", "mig-enabled": True,
                                   "mig-devices": {"1g.18gbb": 7}}]}  # fmt: skip
    refused = fleet.playbook(inventory(fleet, "all-balanced", "all-1g", configs=typo))
    assert refused.returncode != 0
    assert "mig-configs.all-1g[0].mig-devices.\"1g.18gbb\": '1g.18gbb' is not a MIG profile" in (
        refused.output
    )
    # One node's layout that does not fit its GPUs: every node is held back.
    too_big = fleet.playbook(inventory(fleet, "all-balanced", "all-1g", own={"gpu04": "all-8"}))
    assert too_big.returncode != 0
    assert "gpu04: its config (selected: all-8) is invalid; no node was touched." in (
        too_big.output
    )
    assert "1g: 8 wanted, at most 7 1g.5gb fit" in too_big.output
    assert [r[1] for r in too_big.summary().values()] == ["not reached"] * 3 + ["FAILED"]

    for host in fleet.hosts:
        assert not host.installed(), host.name
        assert host.read("/etc/migd/config.yaml") is None
        assert host.mutating_calls() == 0
        assert changes_logged(host) == []


def test_first_rollout_group_layouts_one_node_of_its_own_and_a_reboot(fleet: Fleet) -> None:
    run = fleet.playbook(first_rollout(fleet), "-e", "migd_serial=4")
    assert run.returncode == 0
    assert all(counts["failed"] == 0 and counts["changed"] > 0 for counts in run.recap.values())

    assert fleet["gpu01"].layouts() == H200_HALF
    assert fleet["gpu02"].layouts() == H100_BALANCED
    assert fleet["gpu03"].layouts() == {i: A100_1G for i in range(4)}
    assert fleet["gpu04"].layouts() == {i: A100_1G for i in range(2)}
    # The passthrough node could not reset its GPUs: it was rebooted, once, and asserted.
    assert [h.reboots for h in fleet.hosts] == [0, 0, 1, 0]
    assert fleet["gpu03"].mig_modes() == [{"current": 1, "pending": 1}] * 4
    assert fleet["gpu03"].read("/var/lib/migd/rollout-reboot") is None  # the marker is gone

    summary = run.summary()
    assert summary["gpu01"][1:5] == ["changed", "half-1g", "8/8", "no"]
    assert summary["gpu02"][1:5] == ["changed", "all-balanced", "2/2", "no"]
    assert summary["gpu03"][1:5] == ["changed", "all-1g", "4/4", "yes"]
    assert summary["gpu04"][1:5] == ["changed", "all-1g", "2/2", "no"]
    for host in fleet.hosts:
        assert changes_logged(host) == ["pre", "post"], host.name
        stat = host.must("stat", "-c", "%U:%G %a", "/etc/migd/config.yaml")
        assert stat.split() == ["root:root", "644"]
        assert host.must("systemctl", "is-enabled", "migd").strip() == "enabled"
        # Each node's metrics endpoint is on its own address, from migd_settings.
        assert "migd_ready 1.0" in scrape(host)


def test_a_second_run_changes_nothing(fleet: Fleet) -> None:
    before, reboots = calls(fleet), [h.reboots for h in fleet.hosts]
    run = fleet.playbook(first_rollout(fleet), "-e", "migd_serial=4")
    assert run.returncode == 0
    assert {name: counts["changed"] for name, counts in run.recap.items()} == {
        h.name: 0 for h in fleet.hosts
    }
    assert calls(fleet) == before
    assert [h.reboots for h in fleet.hosts] == reboots
    assert [row[1] for row in run.summary().values()] == ["in place"] * 4
    assert all(changes_logged(h) == ["pre", "post"] for h in fleet.hosts)


def test_check_mode_shows_the_diff_and_the_plan_and_touches_nothing(fleet: Fleet) -> None:
    gpu02 = fleet["gpu02"]
    busy_gi = next(
        gi["id"] for gi in gpu02.show()["gpus"][0]["gpu_instances"] if gi["profile"] == "3g.40gb"
    )
    gpu02.sim("process", "add", "--gpu", "0", "--gi", str(busy_gi), "--pid", str(BUSY_PID))
    before, files = calls(fleet), configs_on(fleet)
    generations = [reload_generation(h) for h in fleet.hosts]

    run = fleet.playbook(relayout(fleet), "--check", "--diff", "-e", "migd_serial=4")
    assert run.returncode == 0
    # The config diff per node, and migd plan of the new config.
    assert "-selected-config: half-1g\n+selected-config: all-1g" in run.output
    assert "-selected-config: all-1g\n+selected-config: all-balanced" in run.output
    assert (
        "GPU 0 NVIDIA H100 80GB HBM3 (00000000:18:00.0): 1g.10gb×2+2g.20gb+3g.40gb -> 1g.10gb×7"
        in (run.output)
    )
    assert f"runs pid(s) {BUSY_PID}" in run.output
    assert "(blocked: a run would fail on this node)" in run.output
    assert [row[1] for row in run.summary().values()] == ["would change"] * 4

    assert calls(fleet) == before
    assert configs_on(fleet) == files
    assert [reload_generation(h) for h in fleet.hosts] == generations


def test_a_relayout_stops_at_the_first_node_that_does_not_take_it(fleet: Fleet) -> None:
    """serial 1: gpu01 changes; on gpu02 a busy instance stands in the new layout's way,
    so gpu02 fails naming the pid and the roll stops; gpu03 and gpu04 are not touched."""
    before = calls(fleet)
    files = configs_on(fleet)
    gpu02_before = fleet["gpu02"].layouts()

    run = fleet.playbook(relayout(fleet), "-e", "migd_serial=1")
    assert run.returncode != 0
    assert fleet["gpu01"].layouts() == {i: {"1g.18gb": 7} for i in range(8)}
    # On gpu02 migd changed GPU 1 and left GPU 0, whose busy instance the change would
    # have destroyed, as it was: the process still has its instance.
    assert fleet["gpu02"].layouts() == {0: gpu02_before[0], 1: {"1g.10gb": 7}}
    assert fleet["gpu02"].show()["gpus"][0]["processes"][0]["pid"] == BUSY_PID
    assert f"runs pid(s) {BUSY_PID} and would have to be destroyed" in run.output
    assert "gpu02: blocked: the change would destroy instances that run processes" in run.output
    assert "Nodes after this one are not touched." in run.output
    for name in ("gpu03", "gpu04"):
        assert calls(fleet)[name] == before[name]
        assert configs_on(fleet)[name] == files[name]
        assert changes_logged(fleet[name]) == ["pre", "post"]
    assert changes_logged(fleet["gpu01"]) == ["pre", "post", "pre", "post"]
    assert changes_logged(fleet["gpu02"]) == ["pre", "post", "pre"]

    summary = run.summary()
    assert summary["gpu01"][1:4] == ["changed", "all-1g", "8/8"]
    assert summary["gpu02"][1] == "FAILED"
    assert summary["gpu03"][1] == summary["gpu04"][1] == "not reached"
    assert run.recap["gpu01"]["failed"] == 0 and run.recap["gpu02"]["failed"] == 1
    assert "gpu03" not in run.recap or run.recap["gpu03"]["changed"] == 0


def test_a_node_is_rebooted_at_most_once_for_a_layout(fleet: Fleet) -> None:
    """Turning MIG off on the passthrough node needs a reboot. Not allowed: the node fails
    and says how to allow it. Allowed, with a reboot that does not activate the change (it
    needs a power cycle, say): one reboot, then the roll-out fails instead of rebooting
    again, on this run and the next."""
    gpu03 = fleet["gpu03"]
    gpu03.reboot_activates = False
    reboots = gpu03.reboots
    limit = ("--limit", "gpu03")
    disable = inventory(fleet, "all-1g", "all-1g", own={"gpu03": "all-disabled"})

    forbidden = fleet.playbook(disable, *limit, "-e", '{"migd_reboot": false}')
    assert forbidden.returncode != 0
    assert "gpu03: a reboot is needed to change the MIG mode: set migd_reboot: true" in (
        forbidden.output
    )
    assert gpu03.reboots == reboots

    first = fleet.playbook(disable, *limit)
    assert first.returncode != 0
    assert gpu03.reboots == reboots + 1
    assert "a reboot is still needed to change the MIG mode after the node was rebooted" in (
        first.output
    )
    again = fleet.playbook(disable, *limit)
    assert again.returncode != 0
    assert gpu03.reboots == reboots + 1
    assert "gpu03 was rebooted for this layout already (/var/lib/migd/rollout-reboot)" in (
        again.output
    )
    assert gpu03.mig_modes() == [{"current": 1, "pending": 0}] * 4
