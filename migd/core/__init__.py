"""The pure core: everything that decides, over plain values. Tested without NVML.

- ``profiles``: profile names and NVML's profile-index tables, written once;
- ``layout``: what a GPU offers, holds and should hold (``GpuState``, ``DesiredGpu``);
- ``config``: the config language's values and which config a node applies;
- ``gpu_models``: the GPU model tables, as values; ``nvml_codes``: NVML's return codes;
- ``selection``: which layout each GPU gets, resolved against its own profile table;
- ``placement``: where instances fit, by exact search; ``names``: how layouts are named;
- ``checkpoint``: a GPU's exact geometry; ``compare``: whether GPUs hold what they should;
- ``planner`` and ``plan``: the one planning entry point and the one Plan it returns.

May import: the standard library's pure modules, ``migd.errors`` and ``migd.core``.
Never pynvml, subprocess, threading, sockets, YAML or file I/O, nor any other part of
migd.
"""
