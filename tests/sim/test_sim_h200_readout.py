"""The simulated H200 answers as the real one did (fixtures/h200-nvml-readout.json).

Read through plain pynvml calls, exactly as the readout was taken: every profile index
0..17 with version=2, the possible placements and the remaining capacity of each
supported profile, and the errors (with pynvml's classes and texts) for the others.
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

import pynvml
import pytest
from paths import H200_FIXTURE
from sim_support import gi_placements, gpu_instances

READOUT = json.loads(H200_FIXTURE.read_text())
PROFILES = sorted(
    READOUT["gpu_instance_profiles"].items(), key=lambda item: item[1]["constant_value"]
)


def test_the_readout_covers_every_profile_index() -> None:
    indices = [entry["constant_value"] for _, entry in PROFILES]
    assert indices == list(range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT))


@pytest.mark.parametrize(("constant", "entry"), PROFILES, ids=[name for name, _ in PROFILES])
def test_profile_matches_the_real_h200(h200: Any, constant: str, entry: dict[str, Any]) -> None:
    index = entry["constant_value"]
    assert getattr(pynvml, constant) == index
    if "error" in entry:
        with pytest.raises(pynvml.NVMLError) as raised:
            pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h200, index, version=2)
        error = raised.value
        assert error.value == entry["error"]["code"]
        assert type(error) is pynvml.NVMLError._valClassMapping[entry["error"]["code"]]
        assert str(error) == entry["error"]["error"]
        return
    info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h200, index, version=2)
    expected = entry["info"]
    for field, _ in info._fields_:
        value = getattr(info, field)
        if field == "name":
            # The C field holds the NUL-terminated bytes; pynvml's structure decodes them.
            offset = type(info).name.offset
            raw = bytes(info)[offset : offset + len(expected["name"]) + 1]
            assert raw == expected["name"].encode() + b"\0"
            assert value == expected["name"]
        else:
            assert value == expected[field], field
    assert info.version == 0  # the real driver hands the v2 structure back with version 0
    placements = [(p["start"], p["size"]) for p in entry["possible_placements"]]
    assert gi_placements(h200, info.id) == placements
    assert (
        pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h200, info.id)
        == entry["remaining_capacity"]
    )
    # ...and the same by profile id, and through the v1 structure.
    by_id = pynvml.nvmlDeviceGetGpuInstanceProfileInfoById(h200, info.id)
    assert bytes(by_id) == bytes(info)
    v1 = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h200, index, version=1)
    assert [getattr(v1, f) for f, _ in v1._fields_] == [getattr(info, f) for f, _ in v1._fields_]


def test_device_basics(h200: Any) -> None:
    device = READOUT["device"]
    assert pynvml.nvmlDeviceGetName(h200) == device["name"]
    pci = pynvml.nvmlDeviceGetPciInfo(h200)
    assert pci.pciDeviceId == device["pci_device_id_int"]
    assert f"0x{pci.pciDeviceId:08X}" == "0x233510DE"
    assert pci.pciSubSystemId == 0x18BF10DE
    assert pci.busId == "00000000:18:00.0"
    assert pynvml.nvmlDeviceGetMemoryInfo(h200).total == device["memory_total_bytes"]
    memory = pynvml.nvmlDeviceGetMemoryInfo(h200, version=pynvml.nvmlMemory_v2)
    assert memory.total == device["memory_total_bytes"]
    assert memory.free + memory.used == memory.total
    assert pynvml.nvmlDeviceGetArchitecture(h200) == device["architecture"]
    assert pynvml.nvmlDeviceGetMigMode(h200) == device["mig_mode_current_pending"]
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(h200) == device["max_mig_device_count"]
    assert pynvml.nvmlSystemGetDriverVersion() == READOUT["driver_version"]
    assert pynvml.nvmlSystemGetNVMLVersion() == READOUT["nvml_version"]
    assert pynvml.nvmlDeviceGetUUID(h200).startswith("GPU-")


def test_mig_off_answers_as_the_real_h200(h200: Any) -> None:
    """MIG disabled: listings succeed empty, lookups by id are NOT_FOUND, and the
    GI/CI-id calls on a GPU handle are INVALID_ARGUMENT."""
    assert gpu_instances(h200, 19) == []
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetGpuInstanceById(h200, 1)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h200, 0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetGpuInstanceId(h200)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetComputeInstanceId(h200)
    is_mig = pynvml.nvmlDeviceIsMigDeviceHandle(h200)
    assert isinstance(is_mig, ctypes.c_uint) and not is_mig.value
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(h200) == []
    # Creating needs MIG on; nvml.h: NOT_SUPPORTED "if device doesn't have MIG mode enabled".
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceCreateGpuInstance(h200, 19)
