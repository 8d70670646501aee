"""The device-plugin strategy check on layouts that pass and fail each strategy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from geometry_support import H200, apply_text, config_text, make_node, snapshot

from migd.core.layout import NodeSnapshot
from migd.node.strategy import (
    STRATEGIES,
    StrategyCheck,
    check_strategy,
    device_types,
    strategy_extra,
)

L40S = "L40S-48GB"  # not MIG-capable


def node_with(tmp_path: Path, models: list[str], text: str, name: str) -> NodeSnapshot:
    make_node(tmp_path / "node.json", models)
    result = apply_text(text, name)
    assert result.exit_code == 0, result
    return snapshot()


def per_gpu(*layouts: str) -> str:
    """A config 'c' giving GPU i the i-th layout ('' = MIG off, ',' = on, no instances)."""
    lines = ["version: v1", "mig-configs:", "  c:"]
    for index, layout in enumerate(layouts):
        lines.append(f"    - devices: [{index}]")
        if layout == "":
            lines.append("      mig-enabled: false")
            continue
        lines.append("      mig-enabled: true")
        parts = [p for p in layout.split(",") if p]
        if not parts:
            lines.append("      mig-devices: {}")
            continue
        lines.append("      mig-devices:")
        lines += [f'        "{p.split("=")[0]}": {p.split("=")[1]}' for p in parts]
    return "\n".join(lines) + "\n"


def verdicts(snap: NodeSnapshot) -> dict[str, bool]:
    return {s: check_strategy(s, snap).compatible for s in STRATEGIES}


def test_one_device_type_everywhere_suits_every_strategy(tmp_path: Path) -> None:
    snap = node_with(tmp_path, [H200, H200], config_text({"c": "1g.18gb=7"}), "c")
    assert verdicts(snap) == {"none": True, "single": True, "mixed": True}
    check = check_strategy("single", snap)
    assert check == StrategyCheck("single", True, (), ("1g.18gb",))
    assert check.summary() == "the layout suits the device plugin's single strategy"


def test_two_device_types_fail_single_only(tmp_path: Path) -> None:
    snap = node_with(tmp_path, [H200, H200], per_gpu("1g.18gb=7", "3g.71gb=2"), "c")
    assert verdicts(snap) == {"none": True, "single": False, "mixed": True}
    check = check_strategy("single", snap)
    assert check.reasons == (
        "the node has 2 MIG device types (1g.18gb on GPU 0, 3g.71gb on GPU 1); "
        "single needs exactly one",
    )
    assert check.device_types == ("1g.18gb", "3g.71gb")


def test_a_gpu_with_mig_off_fails_single_only(tmp_path: Path) -> None:
    snap = node_with(tmp_path, [H200, H200, H200], per_gpu("2g.35gb=3", "", ""), "c")
    assert verdicts(snap) == {"none": True, "single": False, "mixed": True}
    assert check_strategy("single", snap).reasons == (
        "GPUs 1, 2 have MIG disabled; single needs MIG on every GPU",
    )


def test_a_gpu_without_mig_support_fails_single_only(tmp_path: Path) -> None:
    snap = node_with(tmp_path, [H200, L40S], per_gpu("1g.18gb=7"), "c")
    assert verdicts(snap) == {"none": True, "single": False, "mixed": True}
    assert "GPU 1 has MIG disabled" in check_strategy("single", snap).reasons[0]


def test_an_empty_mig_gpu_fails_single_and_mixed(tmp_path: Path) -> None:
    snap = node_with(tmp_path, [H200, H200], per_gpu("1g.18gb=7", ","), "c")
    assert verdicts(snap) == {"none": True, "single": False, "mixed": False}
    assert check_strategy("mixed", snap).reasons == (
        "GPU 1 has MIG enabled but no MIG device; the device plugin may refuse to start",
    )
    assert check_strategy("single", snap).reasons == ("GPU 1 has no MIG device",)
    assert (
        check_strategy("mixed", snap)
        .summary()
        .startswith(
            "the layout does not suit the device plugin's mixed strategy: GPU 1 has MIG enabled"
        )
    )


def test_a_gpu_instance_without_compute_instances_offers_no_device(tmp_path: Path) -> None:
    snap = node_with(tmp_path, [H200], config_text({"c": "3g.71gb=2"}), "c")
    gpu = snap.gpu(0)
    bare = dataclasses.replace(
        gpu, instances=tuple(dataclasses.replace(gi, compute_instances=()) for gi in gpu.instances)
    )
    assert device_types(bare) == ()
    assert not check_strategy("mixed", NodeSnapshot((bare,))).compatible


def test_partial_compute_instances_are_their_own_device_type(tmp_path: Path) -> None:
    snap = node_with(tmp_path, [H200, H200], config_text({"c": "1c.2g.35gb=2"}), "c")
    assert device_types(snap.gpu(0)) == ("1c.2g.35gb",)
    assert verdicts(snap) == {"none": True, "single": True, "mixed": True}


def test_mig_off_everywhere(tmp_path: Path) -> None:
    make_node(tmp_path / "node.json", [H200, H200])
    snap = snapshot()
    assert verdicts(snap) == {"none": True, "single": False, "mixed": True}


def test_an_unknown_strategy_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown device-plugin strategy"):
        check_strategy("spread", NodeSnapshot(()))  # type: ignore[arg-type]


def test_the_check_as_the_daemon_view_carries_it(tmp_path: Path) -> None:
    snap = node_with(tmp_path, [H200, H200], per_gpu("1g.18gb=7", ","), "c")
    assert strategy_extra("mixed", snap) == {
        "device_plugin_strategy": "mixed",
        "device_plugin_strategy_compatible": "false",
        "device_plugin_strategy_problems": "GPU 1 has MIG enabled but no MIG device; "
        "the device plugin may refuse to start",
    }
    assert strategy_extra("none", snap) == {
        "device_plugin_strategy": "none",
        "device_plugin_strategy_compatible": "true",
    }
