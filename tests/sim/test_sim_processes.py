"""Several processes on one simulated node: shared state, crashes, faults, statistics."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest
from sim_support import create_gi, gi_layout, migd, python

from migd.sim.store import StateStore

# A client process: activate the simulator on argv[1], then run argv[2] (Python code)
# with pynvml, the GPU handles and helpers in scope; prints what it puts in ``out``.
CLIENT = """
import ctypes, json, sys, time
import pynvml
from migd import sim
sim.activate(sys.argv[1])
pynvml.nvmlInit()
dev = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
def place(d, profile, start, size):
    p = pynvml.c_nvmlGpuInstancePlacement_t(start, size)
    return pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(d, profile, ctypes.byref(p))
def attempt(fn, *args):
    try:
        fn(*args)
        return "SUCCESS"
    except pynvml.NVMLError as e:
        return type(e).__name__
out = {}
exec(sys.argv[2])
print(json.dumps(out))
"""


def run_client(path: Path, code: str) -> dict[str, Any]:
    proc = python(CLIENT, str(path), code)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    return json.loads(stdout)


def test_two_processes_share_one_node(
    node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    path = node("H200", "H200")
    nvml(path)
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    pynvml.nvmlDeviceSetMigMode(device, 1)
    create_gi(device, 9, 0, 4)
    seen = run_client(
        path,
        "out['mode'] = pynvml.nvmlDeviceGetMigMode(dev[0])\n"
        "out['gi'] = pynvml.nvmlGpuInstanceGetInfo(pynvml.nvmlDeviceGetGpuInstanceById(dev[0], 1)"
        ").placement.start\n"
        "place(dev[0], 9, 4, 4)\n",
    )
    assert seen == {"mode": [1, 1], "gi": 0}
    assert gi_layout(device) == [(1, 9, 0, 4), (2, 9, 4, 4)]


@pytest.mark.parametrize("after_effect", [False, True])
def test_a_process_killed_in_a_create_leaves_a_consistent_node(
    after_effect: bool, node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    """SIGKILL at the 3rd mutating call (the second create): the node holds the first GI,
    plus the second one only if the kill came after the call took effect."""
    path = node("H200")
    args = ["sim", "fault", str(path), "--kill-at", "3"]
    migd(*args, *(["--after-effect"] if after_effect else []))
    proc = python(
        CLIENT,
        str(path),
        "pynvml.nvmlDeviceSetMigMode(dev[0], 1)\n"
        "place(dev[0], 19, 0, 1)\n"
        "place(dev[0], 19, 1, 1)\n"
        "out['survived'] = True\n",
    )
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and stdout == ""
    nvml(path)  # readable, and the lock is free
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    expected = [(7, 19, 0, 1), (8, 19, 1, 1)] if after_effect else [(7, 19, 0, 1)]
    assert gi_layout(device) == expected
    create_gi(device, 19, 2, 1)  # the kill fired once; mutations go on
    assert StateStore(path).read().faults.kill is None
    assert not list(path.parent.glob("*.tmp.*"))


def test_fault_after_n_for_k_calls_counts_across_processes(
    node: Callable[..., Path], nvml: Callable[[Path], Any]
) -> None:
    path = node("H200", "H200")
    migd(
        "sim", "fault", str(path), "--call", "nvmlDeviceGetMigMode",
        "--code", "UNKNOWN", "--after", "2", "--count", "2",
    )  # fmt: skip
    nvml(path)
    device = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetMigMode(device) == [0, 0]  # call 1
    seen = run_client(
        path,
        "out['r'] = [attempt(pynvml.nvmlDeviceGetMigMode, dev[0]) for _ in range(2)]",
    )  # calls 2 and 3
    assert seen["r"] == ["SUCCESS", "NVMLError_Unknown"]
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlDeviceGetMigMode(device)  # call 4
    assert pynvml.nvmlDeviceGetMigMode(device) == [0, 0]  # call 5: spent
    stats = json.loads(migd("sim", "stats", str(path), "--json").stdout)
    assert stats["nvmlDeviceGetMigMode"] == {"SUCCESS": 3, "UNKNOWN": 2}
    assert stats["nvmlInitWithFlags"] == {"SUCCESS": 2}


def test_fault_on_one_gpu_only(node: Callable[..., Path], nvml: Callable[[Path], Any]) -> None:
    path = node("H200", "H200", "H200", "H200")
    migd(
        "sim", "fault", str(path), "--call", "nvmlDeviceCreateGpuInstanceWithPlacement",
        "--code", "INSUFFICIENT_RESOURCES", "--gpu", "3",
    )  # fmt: skip
    nvml(path)
    for index in range(4):
        device = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceSetMigMode(device, 1)
        if index == 3:
            with pytest.raises(pynvml.NVMLError_InsufficientResources):
                create_gi(device, 19, 0, 1)
            assert gi_layout(device) == []
        else:
            create_gi(device, 19, 0, 1)
    assert StateStore(path).stats()["nvmlDeviceCreateGpuInstanceWithPlacement"] == {
        "INSUFFICIENT_RESOURCES": 1,
        "SUCCESS": 3,
    }


def test_a_hanging_call(node: Callable[..., Path], nvml: Callable[[Path], Any]) -> None:
    path = node("H200")
    migd("sim", "fault", str(path), "--call", "nvmlDeviceGetCount_v2", "--hang", "0.6")
    nvml(path)
    started = time.monotonic()
    assert pynvml.nvmlDeviceGetCount() == 1
    assert time.monotonic() - started >= 0.6
    started = time.monotonic()
    pynvml.nvmlDeviceGetCount()  # a hang hits one call unless --count says more
    assert time.monotonic() - started < 0.5


def test_latency_is_spent_outside_the_lock(node: Callable[..., Path]) -> None:
    """Two processes each make one slow mutating call on their own GPU: the calls
    overlap in time, so neither waited for the other's delay under the lock."""
    path = node("H200", "H200")
    for gpu in ("0", "1"):
        migd(
            "sim", "fault", str(path), "--call", "nvmlDeviceSetMigMode",
            "--latency", "1500", "--gpu", gpu,
        )  # fmt: skip
    # Both clients start their call together (a file barrier hides start-up jitter).
    code = (
        "import pathlib\n"
        "i = int(sys.argv[3]); barrier = pathlib.Path(sys.argv[4])\n"
        "(barrier / str(i)).touch()\n"
        "while len(list(barrier.iterdir())) < 2: time.sleep(0.01)\n"
        "t0 = time.time()\n"
        "pynvml.nvmlDeviceSetMigMode(dev[i], 1)\n"
        "out['span'] = [t0, time.time()]\n"
    )
    barrier = path.parent / "barrier"
    barrier.mkdir()
    procs = [python(CLIENT, str(path), code, str(i), str(barrier)) for i in (0, 1)]
    spans = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        spans.append(json.loads(stdout)["span"])
    (a0, a1), (b0, b1) = spans
    assert a1 - a0 >= 1.5 and b1 - b0 >= 1.5
    assert a0 < b1 and b0 < a1, spans  # the two delays overlapped
    node_now = StateStore(path).read()
    assert [g.mig_current for g in node_now.gpus] == [1, 1]
