"""``migd sim`` sub-verbs, run as a user runs them (subprocesses)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest
from sim_support import create_ci, create_gi, gi_layout, migd, migd_here, show

from migd.sim.store import StateStore


def test_init_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.json"
    out = migd(
        "sim", "init", str(path), "--gpu", "H200x2", "--gpu", "a100-sxm4-40gb", "--gpu", "L40S"
    )
    assert "4 GPU(s)" in out.stdout
    shown = show(path)
    assert [g["model"] for g in shown["gpus"]] == [
        "H200-SXM-141GB",
        "H200-SXM-141GB",
        "A100-SXM4-40GB",
        "L40S-48GB",
    ]
    assert [g["bus_id"] for g in shown["gpus"]] == [
        "00000000:18:00.0",
        "00000000:2A:00.0",
        "00000000:3A:00.0",
        "00000000:5D:00.0",
    ]
    assert all(
        g["mig"] == {"current": 0, "pending": 0} and not g["gpu_instances"] for g in shown["gpus"]
    )
    assert shown["flags"] == {"system_clients": True, "passthrough": False, "root": True}
    text = migd("sim", "show", str(path)).stdout
    assert "GPU 3  NVIDIA L40S (L40S-48GB)" in text and "MIG: not supported" in text
    assert "GPU 0  NVIDIA H200 (H200-SXM-141GB)  00000000:18:00.0" in text
    # A fresh init replaces the node and empties the call log.
    assert (
        migd_here("sim", "init", str(path), "--gpu", "H100-SXM5-80GB", "--no-clients", "--non-root")
        == 0
    )
    capsys.readouterr()
    assert migd_here("sim", "show", str(path), "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["gpus"]) == 1
    assert shown["flags"] == {"system_clients": False, "passthrough": False, "root": False}
    assert migd_here("sim", "stats", str(path), "--json") == 0
    assert json.loads(capsys.readouterr().out) == {}


def test_init_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert migd_here("sim", "init", str(tmp_path / "n.json"), "--gpu", "V100") == 2
    assert "H200-SXM-141GB" in capsys.readouterr().err
    assert migd_here("sim", "init", str(tmp_path / "no" / "n.json"), "--gpu", "H200") == 2
    assert migd_here("sim", "init", str(tmp_path / "n.json"), "--gpu", "H200x0") == 2
    assert migd_here("sim", "show", str(tmp_path / "none.json")) == 2
    assert "migd sim init" in capsys.readouterr().err


def test_show_lists_instances_and_processes(
    node: Callable[..., Path], nvml: Callable[[Path], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = node("H200")
    nvml(path)
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    pynvml.nvmlDeviceSetMigMode(device, 1)
    gi = create_gi(device, 9, 4, 4)
    create_ci(gi, 0, 1, 1)
    migd(
        "sim", "process", str(path), "add", "--gpu", "0", "--gi", "2", "--ci", "0", "--pid", "4242"
    )
    gpu = show(path)["gpus"][0]
    assert gpu["gpu_instances"] == [
        {
            "id": 2,
            "profile_id": 9,
            "profile": "3g.71gb",
            "placement": {"start": 4, "size": 4},
            "compute_instances": [
                {
                    "id": 0,
                    "profile_id": 0,
                    "profile": "1c.3g.71gb",
                    "placement": {"start": 1, "size": 1},
                    "mig_uuid": pynvml.nvmlDeviceGetUUID(
                        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(device, 0)
                    ),
                }
            ],
        }
    ]
    assert gpu["processes"] == [{"pid": 4242, "gi": 2, "ci": 0}]
    capsys.readouterr()
    assert migd_here("sim", "show", str(path)) == 0
    text = capsys.readouterr().out
    assert "GI  2  profile  9  3g.71gb" in text and "process 4242 on GI 2 CI 0" in text
    # Bad process requests exit 2 and change nothing.
    for args in (
        ["add", "--gpu", "0", "--pid", "1"],  # MIG on: --gi needed
        ["add", "--gpu", "0", "--gi", "9", "--pid", "1"],  # no such GI
        ["add", "--gpu", "0", "--gi", "2", "--pid", "4242"],  # pid taken
        ["add", "--gpu", "0", "--ci", "0", "--pid", "1"],  # --ci without --gi
        ["remove", "--pid", "5"],
    ):
        assert migd_here("sim", "process", str(path), *args) == 2, args
    # The reset refuses while the process runs, then works.
    refused = migd("sim", "reset", str(path), "--gpu", "0", check=False)
    assert refused.returncode == 1 and "4242" in refused.stderr
    assert migd_here("sim", "process", str(path), "remove", "--pid", "4242") == 0
    capsys.readouterr()
    assert migd_here("sim", "reset", str(path), "--bus-id", "00000000:18:00.0,18:00.0") == 0
    out = capsys.readouterr().out
    assert "GPU 0 (00000000:18:00.0) reset: MIG enabled, 1 GPU instance(s) destroyed" in out
    assert gi_layout(device) == []


def test_fault_verbs(node: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = node("H200", "H200")
    migd(
        "sim",
        "fault",
        str(path),
        "--call",
        "nvmlDeviceCreateGpuInstance",
        "--code",
        "23",
        "--count",
        "2",
    )
    assert migd_here("sim", "fault", str(path), "--call", "*", "--latency", "5", "--gpu", "1") == 0
    assert migd_here("sim", "fault", str(path), "--kill-at", "4", "--after-effect") == 0
    assert migd_here("sim", "fault", str(path), "--lost-gpu", "1") == 0
    faults = show(path)["faults"]
    assert faults["calls"][0]["code"] == "INSUFFICIENT_RESOURCES"
    assert faults["calls"][1]["call"] == "*" and faults["calls"][1]["latency_ms"] == 5
    assert faults["kill_at"] == {"at": 4, "after_effect": True, "seen": 0}
    assert faults["lost_gpus"] == [1]
    capsys.readouterr()
    assert migd_here("sim", "show", str(path)) == 0
    assert "SIGKILL at mutating call 4" in capsys.readouterr().out
    for args in (
        ["--call", "nvmlDeviceCreateGpuInstanceV", "--code", "IN_USE"],  # no such symbol
        ["--call", "nvmlDeviceGetCount_v2", "--code", "NOT_A_CODE"],
        ["--call", "nvmlDeviceGetCount_v2"],  # no effect
        ["--code", "IN_USE"],  # no call
        ["--lost-gpu", "7"],
        [],
    ):
        assert migd_here("sim", "fault", str(path), *args) == 2, args
    migd("sim", "fault", str(path), "--clear")
    assert show(path)["faults"] == {"calls": [], "kill_at": None, "lost_gpus": []}


def test_stats_and_non_root(
    tmp_path: Path, nvml: Callable[[Path], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.json"
    migd("sim", "init", str(path), "--gpu", "H200", "--non-root")
    nvml(path)
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        pynvml.nvmlDeviceSetMigMode(device, 1)
    pynvml.nvmlDeviceGetMigMode(device)
    stats = json.loads(migd("sim", "stats", str(path), "--json").stdout)
    assert stats["nvmlDeviceSetMigMode"] == {"NO_PERMISSION": 1}
    assert stats["nvmlDeviceGetMigMode"] == {"SUCCESS": 1}
    assert StateStore(path).stats() == stats
    assert migd_here("sim", "stats", str(path)) == 0
    assert "nvmlDeviceSetMigMode  (NO_PERMISSION 1)" in capsys.readouterr().out


def test_sim_verbs_never_open_nvml(tmp_path: Path) -> None:
    """Under --simulate, `migd sim ...` takes STATE itself: the global option is not used."""
    path = tmp_path / "node.json"
    migd("sim", "init", str(path), "--gpu", "H200")
    out = migd("--simulate", str(tmp_path / "elsewhere.json"), "sim", "show", str(path), "--json")
    assert len(json.loads(out.stdout)["gpus"]) == 1
