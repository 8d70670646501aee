"""The simulator's pure parts, without ctypes or pynvml: semantics, faults, the state format."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from migd.core import nvml_codes
from migd.sim import faults
from migd.sim import node as sim
from migd.sim.state import CallFault, Flags, NodeState, StateError, from_json, to_json
from migd.sim.store import StateStore


def _node(*keys: str, **flags: bool) -> NodeState:
    return sim.new_node(list(keys), seed="test", flags=Flags(**flags))


def _enabled(node: NodeState) -> NodeState:
    return dataclasses.replace(
        node,
        gpus=tuple(dataclasses.replace(g, mig_current=1, mig_pending=1) for g in node.gpus),
    )


@pytest.mark.parametrize(
    ("slots", "placement", "gi_id"),
    [
        (8, (0, 8), 0),
        (8, (0, 4), 1),
        (8, (4, 4), 2),
        (8, (0, 2), 3),
        (8, (6, 2), 6),
        (8, (0, 1), 7),
        (8, (6, 1), 13),
        (4, (0, 4), 0),
        (4, (2, 2), 2),
        (4, (3, 1), 6),
        (12, (0, 12), 0),
        (12, (6, 6), 2),
        (12, (9, 3), 6),
        (8, (1, 2), None),
        (12, (0, 4), None),
    ],
)
def test_gi_partition_id(slots: int, placement: tuple[int, int], gi_id: int | None) -> None:
    assert sim.gi_partition_id(slots, *placement) == gi_id


def test_max_disjoint() -> None:
    assert sim.max_disjoint([]) == 0
    assert sim.max_disjoint([(0, 2), (1, 2), (2, 2)]) == 2
    assert sim.max_disjoint([(0, 4), (0, 1), (1, 1), (4, 4)]) == 3


def test_bus_ids_like_a_dgx() -> None:
    assert [sim.bus_id(i) for i in (0, 7, 8)] == [
        "00000000:18:00.0",
        "00000000:DB:00.0",
        "00000001:18:00.0",
    ]
    assert sim.parse_bus_id("0000:db:00.0") == (0, 0xDB, 0)
    assert sim.parse_bus_id("nonsense") is None


def test_a_refused_create_changes_nothing() -> None:
    node = _enabled(_node("H200-SXM-141GB"))
    node, gi = sim.create_gpu_instance(node, 0, 9, (0, 4))
    assert (gi.id, gi.serial) == (1, 1) and node.next_serial == 2
    for profile, placement, code in (
        (9, (0, 4), nvml_codes.INSUFFICIENT_RESOURCES),
        (5, None, nvml_codes.INSUFFICIENT_RESOURCES),
        (9, (2, 4), nvml_codes.INVALID_ARGUMENT),
        (99, None, nvml_codes.INVALID_ARGUMENT),
    ):
        with pytest.raises(sim.NvmlFailure) as raised:
            sim.create_gpu_instance(node, 0, profile, placement)
        assert raised.value.code == code
    # What a failing call would have returned is the node it was given: values are frozen.
    assert len(node.gpus[0].gpu_instances) == 1


@pytest.mark.parametrize(
    ("key", "flags", "busy", "status", "modes"),
    [
        ("A100-SXM4-40GB", {}, False, nvml_codes.IN_USE, (0, 1)),
        ("A100-SXM4-40GB", {"system_clients": False}, False, nvml_codes.SUCCESS, (1, 1)),
        ("A100-SXM4-40GB", {"system_clients": False}, True, nvml_codes.IN_USE, (0, 1)),
        ("A100-SXM4-40GB", {"passthrough": True}, False, nvml_codes.RESET_REQUIRED, (0, 1)),
        ("H200-SXM-141GB", {}, False, nvml_codes.SUCCESS, (1, 1)),
        ("H200-SXM-141GB", {"passthrough": True}, False, nvml_codes.SUCCESS, (1, 1)),
        ("H200-SXM-141GB", {}, True, nvml_codes.IN_USE, (0, 1)),
    ],
)
def test_mode_change_matrix(
    key: str, flags: dict[str, bool], busy: bool, status: int, modes: tuple[int, int]
) -> None:
    node = _node(key, **flags)
    if busy:
        node = sim.add_process(node, 100, 0, None, None)
    node, got = sim.set_mig_mode(node, 0, 1)
    assert got == status
    assert (node.gpus[0].mig_current, node.gpus[0].mig_pending) == modes


def test_reset_applies_pending_modes_and_clears_instances() -> None:
    node = _node("A100-SXM4-40GB", "A100-SXM4-40GB")
    node, _ = sim.set_mig_mode(node, 0, 1)
    node = sim.reset_gpus(node, [0])
    assert (node.gpus[0].mig_current, node.gpus[0].mig_pending) == (1, 1)
    node, _ = sim.create_gpu_instance(node, 0, 0, None)
    node = sim.reset_gpus(node, [0, 1])
    assert node.gpus[0].gpu_instances == () and node.gpus[0].mig_current == 1
    with pytest.raises(sim.ResetRefused, match="passthrough"):
        sim.reset_gpus(_node("H200-SXM-141GB", passthrough=True), [0])


def test_faults_count_after_n_for_k() -> None:
    node = _node("H200-SXM-141GB", "H200-SXM-141GB")
    fault = CallFault(call="nvmlDeviceGetMigMode", gpu=1, code=nvml_codes.UNKNOWN, after=1, count=2)
    node = faults.add_call_fault(node, fault)
    results = []
    for gpu in (0, 1, 1, 1, 1, 0):
        counted = faults.effect_without_counting(node.faults, "nvmlDeviceGetMigMode", gpu) is None
        node, effect = faults.take(node, "nvmlDeviceGetMigMode", gpu)
        results.append((counted, effect.code))
    assert results == [
        (False, None),
        (True, None),
        (True, nvml_codes.UNKNOWN),
        (True, nvml_codes.UNKNOWN),
        (False, None),
        (False, None),
    ]
    # A fault on every call keeps no counter.
    node = faults.add_call_fault(node, CallFault(call="*", code=nvml_codes.IN_USE, latency_ms=20))
    assert faults.effect_without_counting(node.faults, "nvmlDeviceGetCount_v2", None) == (
        faults.Effect(code=nvml_codes.IN_USE, delay_s=0.02)
    )


def test_kill_fault_fires_once() -> None:
    node = faults.set_kill(_node("H200-SXM-141GB"), 2, after_effect=False)
    node, fired = faults.count_mutation(node)
    assert fired is None
    node, fired = faults.count_mutation(node)
    assert fired is not None and node.faults.kill is None


def test_state_round_trip(tmp_path: Path) -> None:
    node = _enabled(_node("H200-SXM-141GB", "L40S-48GB"))
    node, gi = sim.create_gpu_instance(node, 0, 14, (2, 2))
    node, _ = sim.create_compute_instance(node, 0, gi.serial, 0, (1, 1))
    node = sim.add_process(node, 7, 0, gi.id, 0)
    node = dataclasses.replace(node, flags=Flags(system_clients=False, root=False))
    node = faults.add_call_fault(node, CallFault(call="*", latency_ms=3.0))
    node = faults.set_kill(node, 5, after_effect=True)
    node = faults.add_lost_gpu(node, 1)
    assert from_json(to_json(node)) == node
    store = StateStore(tmp_path / "n.json")
    store.create(node)
    assert StateStore(tmp_path / "n.json").read() == node
    with pytest.raises(StateError):
        from_json({"format": "something else"})


def test_parse_code() -> None:
    assert nvml_codes.parse_code("in_use") == 19
    assert nvml_codes.parse_code("NVML_ERROR_INSUFFICIENT_RESOURCES") == 23
    assert nvml_codes.parse_code("999") == 999
    with pytest.raises(ValueError, match="unknown NVML return code"):
        nvml_codes.parse_code("BROKEN")
