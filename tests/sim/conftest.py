"""Fixtures of the simulator's tests: fresh nodes and an NVML opened on them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest
from sim_support import make_node

from migd import sim
from migd.sim.fakelib import FakeNvmlLibrary


@pytest.fixture(autouse=True)
def _restore_pynvml() -> Iterator[None]:
    """Put back whatever library pynvml had, so no other test meets a node of ours."""
    before = pynvml.nvmlLib
    yield
    lib = pynvml.nvmlLib
    if isinstance(lib, FakeNvmlLibrary):
        while lib.init_count:
            pynvml.nvmlShutdown()
        lib.close()
    with pynvml.libLoadLock:
        pynvml.nvmlLib = before
        pynvml._nvmlGetFunctionPointer_cache.clear()


@pytest.fixture
def node(tmp_path: Path) -> Callable[..., Path]:
    """``node("H200", "A100-SXM4-40GB", clients=False)`` -> the path of a fresh node."""

    def make(*models: str, name: str = "node.json", **flags: Any) -> Path:
        return make_node(tmp_path / name, *models, **flags)

    return make


@pytest.fixture
def nvml() -> Callable[[Path], Any]:
    """``nvml(path)`` activates the simulator on ``path`` and initialises NVML.

    NVML is shut down again after the test, whatever happened in it (``_restore_pynvml``).
    """

    def open_nvml(path: Path) -> Any:
        sim.activate(path)
        pynvml.nvmlInit()
        return pynvml

    return open_nvml


@pytest.fixture
def h200(node: Callable[..., Path], nvml: Callable[[Path], Any]) -> Any:
    """A one-H200 node, NVML open; returns the GPU's handle."""
    nvml(node("H200"))
    return pynvml.nvmlDeviceGetHandleByIndex(0)
