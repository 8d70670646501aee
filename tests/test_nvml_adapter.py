"""The NVML adapter on the simulator, through the real pynvml."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from geometry_support import (
    A100,
    H200,
    add_fault,
    add_process,
    make_node,
    mutating_calls,
    scratch_dir,
    stats,
)
from paths import H200_FIXTURE

from migd.core.layout import Placement
from migd.errors import NvmlError, ReadOnlyError
from migd.gpu.nvml import NvmlAdapter, rule_ci_profiles

FIXTURE = json.loads(H200_FIXTURE.read_text())


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    with scratch_dir(tmp_path) as path:
        yield path


def test_fresh_h200_node_reads_as_the_real_h200(scratch: Path) -> None:
    make_node(scratch / "s.json", [H200] * 8)
    with NvmlAdapter.open(read_only=True) as nvml:
        snap = nvml.snapshot()
    device = FIXTURE["device"]
    assert snap.driver_version == FIXTURE["driver_version"]
    assert snap.nvml_version == FIXTURE["nvml_version"]
    assert [g.index for g in snap.gpus] == list(range(8))
    assert len({g.uuid for g in snap.gpus}) == 8
    assert len({g.bus_id for g in snap.gpus}) == 8
    expected = {
        row["constant_value"]: row
        for row in FIXTURE["gpu_instance_profiles"].values()
        if "info" in row
    }
    for gpu in snap.gpus:
        assert gpu.name == device["name"]
        assert gpu.pci_device_id == device["pci_device_id_int"]
        assert gpu.device_filter == "0x233510DE"
        assert gpu.memory_total_bytes == device["memory_total_bytes"]
        assert (gpu.mig_capable, gpu.mig_enabled, gpu.mig_pending) == (True, False, False)
        assert gpu.instances == ()
        assert gpu.slot_count == 8
        assert {p.index for p in gpu.profiles} == set(expected)
        for profile in gpu.profiles:
            info = expected[profile.index]["info"]
            assert profile.id == info["id"]
            assert profile.name == info["name"].removeprefix("MIG ")
            assert profile.slice_count == info["sliceCount"]
            assert profile.instance_count == info["instanceCount"]
            assert profile.memory_mb == info["memorySizeMB"]
            assert profile.multiprocessor_count == info["multiprocessorCount"]
            assert [(p.start, p.size) for p in profile.placements] == [
                (p["start"], p["size"]) for p in expected[profile.index]["possible_placements"]
            ]


def test_read_only_adapter_refuses_every_mutation_before_nvml(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [H200])
    with NvmlAdapter.open() as nvml:
        assert nvml.set_mig_mode(0, True) == "SUCCESS"
    before = stats(state)
    mutations = [
        lambda n: n.set_mig_mode(0, False),
        lambda n: n.create_gpu_instance(0, 9, Placement(0, 4)),
        lambda n: n.create_compute_instance(0, 1, 2, Placement(0, 4)),
        lambda n: n.destroy_compute_instance(0, 1, 0),
        lambda n: n.destroy_gpu_instance(0, 1),
    ]
    with NvmlAdapter.open(read_only=True) as nvml:
        for mutate in mutations:
            with pytest.raises(ReadOnlyError):
                mutate(nvml)
    after = stats(state)
    assert mutating_calls(after) == mutating_calls(before) == 1
    # Not even a handle lookup reached NVML on the way to a refused mutation.
    assert after.get("nvmlDeviceGetHandleByIndex_v2") == before.get("nvmlDeviceGetHandleByIndex_v2")


def test_nvml_errors_keep_code_and_name_and_are_counted(scratch: Path) -> None:
    make_node(scratch / "s.json", [H200])
    seen: list[tuple[str, str]] = []
    with NvmlAdapter.open(on_error=lambda op, name: seen.append((op, name))) as nvml:
        nvml.snapshot()  # enumerating profiles meets NOT_SUPPORTED and INVALID_ARGUMENT
        assert seen == []
        nvml.set_mig_mode(0, True)
        nvml.create_gpu_instance(0, 9, Placement(0, 4))
        with pytest.raises(NvmlError) as raised:
            nvml.create_gpu_instance(0, 5, Placement(0, 4))  # overlaps the 3g
    assert raised.value.name == "INSUFFICIENT_RESOURCES"
    assert raised.value.code == 23
    assert raised.value.operation == "nvmlDeviceCreateGpuInstanceWithPlacement"
    assert "INSUFFICIENT_RESOURCES" in str(raised.value)
    assert seen == [("nvmlDeviceCreateGpuInstanceWithPlacement", "INSUFFICIENT_RESOURCES")]


def test_instances_compute_instances_and_processes(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [H200, H200])
    with NvmlAdapter.open() as nvml:
        nvml.set_mig_mode(1, True)
        three = nvml.create_gpu_instance(1, 9, Placement(4, 4))
        one_c = [nvml.create_compute_instance(1, three, 0, Placement(i, 1)) for i in range(2)]
        small = nvml.create_gpu_instance(1, 19, Placement(0, 1))
        nvml.create_compute_instance(1, small, 0, Placement(0, 1))
    add_process(state, 4242, gpu=1, gi=three, ci=one_c[1])
    add_process(state, 4343, gpu=1, gi=small, ci=0)
    with NvmlAdapter.open(read_only=True) as nvml:
        gpu = nvml.gpu(1)
        assert nvml.gpu(0).instances == ()
    assert three == 2 and small == 7  # GI ids are the hardware partition index
    by_id = {gi.id: gi for gi in gpu.instances}
    assert by_id[three].placement == Placement(4, 4)
    assert [(c.id, c.profile_id, c.placement) for c in by_id[three].compute_instances] == [
        (one_c[0], 0, Placement(0, 1)),
        (one_c[1], 0, Placement(1, 1)),
    ]
    assert by_id[three].pids == (4242,)
    assert [c.pids for c in by_id[three].compute_instances] == [(), (4242,)]
    assert by_id[small].pids == (4343,) and by_id[small].busy


def test_ci_table_is_ruled_until_a_gi_exists_then_real(scratch: Path) -> None:
    make_node(scratch / "s.json", [H200, H200])
    with NvmlAdapter.open() as nvml:
        before = nvml.gpu(0).profile_by_id(15)
        assert before is not None
        assert before.ci_profiles == rule_ci_profiles(before)
        assert before.full_ci() is not None and before.full_ci().id == 0
        nvml.set_mig_mode(0, True)
        gi = nvml.create_gpu_instance(0, 15, Placement(2, 2))
        real = nvml.compute_instance_profiles(0, gi)
        # Hopper's double-memory 1g: the CI that spans it is the 26-SM REV1 profile.
        after0 = nvml.gpu(0).profile_by_id(15)
        after1 = nvml.gpu(1).profile_by_id(15)  # same model: learned from GPU 0's GI
    assert after0 is not None and after1 is not None
    assert after0.ci_profiles == after1.ci_profiles == real
    full = after0.full_ci()
    assert full is not None and (full.id, full.placements) == (7, (Placement(0, 2),))


def test_rule_ci_table_offers_the_sizes_the_driver_offers(scratch: Path) -> None:
    make_node(scratch / "s.json", [A100])
    with NvmlAdapter.open(read_only=True) as nvml:
        table = {p.slice_count: p for p in nvml.gpu(0).profiles if "+" not in p.name}
    offered = {g: sorted(c.slice_count for c in table[g].ci_profiles) for g in table}
    assert offered == {1: [1], 2: [1, 2], 3: [1, 2, 3], 4: [1, 2, 4], 7: [1, 2, 3, 4, 7]}
    assert table[3].full_ci().name == "3g.20gb"
    assert [c.name for c in table[3].ci_profiles][:2] == ["1c.3g.20gb", "2c.3g.20gb"]


def test_oldest_call_started_tracks_a_slow_call(scratch: Path) -> None:
    state = make_node(scratch / "s.json", [H200])
    add_fault(state, "nvmlDeviceGetMigMode", "", latency_ms=400, count=1)
    with NvmlAdapter.open() as nvml:
        assert nvml.oldest_call_started() is None
        thread = threading.Thread(target=nvml.mig_mode, args=(0,))
        started = time.monotonic()
        thread.start()
        time.sleep(0.15)
        oldest = nvml.oldest_call_started()
        thread.join()
        assert oldest is not None and started <= oldest <= started + 0.15
        assert nvml.oldest_call_started() is None


def test_adapter_is_usable_from_one_thread_per_gpu(scratch: Path) -> None:
    make_node(scratch / "s.json", [H200] * 8)
    with NvmlAdapter.open() as nvml:
        for i in range(8):
            nvml.set_mig_mode(i, True)
        errors: list[BaseException] = []

        def fill(i: int) -> None:
            try:
                for start in range(7):
                    gi = nvml.create_gpu_instance(i, 19, Placement(start, 1))
                    nvml.create_compute_instance(i, gi, 0, Placement(0, 1))
            except BaseException as exc:  # reported to the main thread
                errors.append(exc)

        threads = [threading.Thread(target=fill, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        snap = nvml.snapshot()
    assert all(len(g.instances) == 7 for g in snap.gpus)
    assert all(len(gi.compute_instances) == 1 for g in snap.gpus for gi in g.instances)
