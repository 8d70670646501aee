"""The simulated NVIDIA driver: a fake ``libnvidia-ml`` under pynvml, its state in a file.

``activate(STATE)`` makes pynvml talk to the simulated node kept in the file STATE
(create one with ``migd sim init``). Everything else loads on first use, so importing
this package costs nothing. The simulated GPUs are the GPU model tables migd ships
(``migd.core.gpu_models``, read by ``migd.formats.gpu_models``): the simulator pretends
to be them, ``migd validate --gpu-model`` checks configs against them.

May import: ``migd.errors``, ``migd.core``, ``migd.formats`` and pynvml (it sits under
pynvml, as libnvidia-ml does). Never the GPU side, the node, the daemon or the verbs:
migd's own code cannot tell the simulator from a real driver.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from migd.sim.fakelib import FakeNvmlLibrary

__all__ = ["activate"]


def activate(state: str | os.PathLike[str]) -> FakeNvmlLibrary:
    """Install the simulated library for the node in ``state`` as ``pynvml.nvmlLib``.

    Call it before ``nvmlInit()``; ``nvmlInit()`` then fails with DRIVER_NOT_LOADED if
    ``state`` does not exist. After ``nvmlShutdown()`` it may be called again with
    another STATE and pynvml switches to it. Calling it while NVML is initialised also
    switches, keeping the initialisation count, so an interrupted test cannot wedge the
    next one. Returns the installed library.
    """
    import pynvml

    from migd.sim.fakelib import FakeNvmlLibrary

    lib = FakeNvmlLibrary(state)
    # pynvml keeps the library in a module global and caches every function it fetched
    # from it; both change together under pynvml's own lock.
    with pynvml.libLoadLock:
        previous = pynvml.nvmlLib
        if isinstance(previous, FakeNvmlLibrary):
            lib.init_count = previous.init_count
            previous.close()
        pynvml.nvmlLib = lib
        pynvml._nvmlGetFunctionPointer_cache.clear()
    return lib
