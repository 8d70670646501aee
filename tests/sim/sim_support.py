"""Helpers for the simulator's tests: make nodes, call NVML the raw pynvml way, run ``migd``.

Everything here talks to the simulator through plain pynvml calls (the adapter in
migd/nvml.py is tested elsewhere), with ctypes arguments as the C library takes them.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pynvml
from paths import REPO

from migd.formats.gpu_models import load_model
from migd.sim import node as sim_node
from migd.sim.state import Flags
from migd.sim.store import StateStore


def make_node(
    path: Path,
    *models: str,
    clients: bool = True,
    passthrough: bool = False,
    root: bool = True,
) -> Path:
    """Write a fresh node of ``models`` (names or keys) to ``path``, as ``sim init`` does."""
    keys = [load_model(m).key for m in models]
    flags = Flags(system_clients=clients, passthrough=passthrough, root=root)
    StateStore(path).create(sim_node.new_node(keys, seed=path.name, flags=flags))
    return path


def address(handle: Any) -> int:
    """A handle's pointer value: handles are compared by address, never with ==."""
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


def gi_placements(device: Any, profile_id: int) -> list[tuple[int, int]]:
    """Possible placements, asking for the count first (a NULL array)."""
    count = ctypes.c_uint(0)
    pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(device, profile_id, None, ctypes.byref(count))
    array = (pynvml.c_nvmlGpuInstancePlacement_t * count.value)()
    pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(
        device, profile_id, array, ctypes.byref(count)
    )
    return [(array[i].start, array[i].size) for i in range(count.value)]


def ci_placements(gpu_instance: Any, profile_id: int) -> list[tuple[int, int]]:
    count = ctypes.c_uint(0)
    fn = pynvml.nvmlGpuInstanceGetComputeInstancePossiblePlacements
    fn(gpu_instance, profile_id, None, ctypes.byref(count))
    array = (pynvml.c_nvmlComputeInstancePlacement_t * count.value)()
    fn(gpu_instance, profile_id, array, ctypes.byref(count))
    return [(array[i].start, array[i].size) for i in range(count.value)]


def create_gi(device: Any, profile_id: int, start: int, size: int) -> Any:
    placement = pynvml.c_nvmlGpuInstancePlacement_t()
    placement.start, placement.size = start, size
    return pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(
        device, profile_id, ctypes.byref(placement)
    )


def create_ci(gpu_instance: Any, profile_id: int, start: int, size: int) -> Any:
    placement = pynvml.c_nvmlComputeInstancePlacement_t()
    placement.start, placement.size = start, size
    return pynvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement(
        gpu_instance, profile_id, ctypes.byref(placement)
    )


def gpu_instances(device: Any, profile_id: int, capacity: int = 16) -> list[Any]:
    array = (pynvml.c_nvmlGpuInstance_t * capacity)()
    count = ctypes.c_uint(capacity)
    pynvml.nvmlDeviceGetGpuInstances(device, profile_id, array, ctypes.byref(count))
    return [array[i] for i in range(count.value)]


def compute_instances(gpu_instance: Any, profile_id: int, capacity: int = 8) -> list[Any]:
    array = (pynvml.c_nvmlComputeInstance_t * capacity)()
    count = ctypes.c_uint(capacity)
    pynvml.nvmlGpuInstanceGetComputeInstances(gpu_instance, profile_id, array, ctypes.byref(count))
    return [array[i] for i in range(count.value)]


def gi_layout(device: Any) -> list[tuple[int, int, int, int]]:
    """(GI id, profile id, start, size) of every GI on the device, by GI id."""
    found = []
    model_ids = set()
    for index in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            model_ids.add(pynvml.nvmlDeviceGetGpuInstanceProfileInfo(device, index).id)
        except pynvml.NVMLError:
            continue
    for profile_id in model_ids:
        for gi in gpu_instances(device, profile_id):
            info = pynvml.nvmlGpuInstanceGetInfo(gi)
            found.append((info.id, info.profileId, info.placement.start, info.placement.size))
    return sorted(found)


def migd(*args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``migd`` (this checkout's) in a subprocess; text output captured."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MIGD_SIMULATE", None)
    result = subprocess.run(
        [sys.executable, "-m", "migd", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"migd {' '.join(args)} exited {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


def migd_here(*args: str) -> int:
    """Run ``migd`` in this process (quicker than a subprocess; output goes to capsys)."""
    from migd.cli import main

    try:
        return main(list(args))
    except SystemExit as exc:  # argparse refusing the arguments
        return int(exc.code or 0)


def show(path: Path) -> dict[str, Any]:
    return json.loads(migd("sim", "show", str(path), "--json").stdout)


def python(code: str, *args: str, timeout: float = 60) -> subprocess.Popen[str]:
    """Start ``python -c code args...`` with this checkout importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
