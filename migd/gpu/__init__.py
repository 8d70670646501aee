"""The GPU side: the NVML adapter, and the executor that carries out a Plan.

``nvml`` is the only module of migd that imports pynvml: it turns NVML into typed
snapshots and a handful of mutations. ``executor`` runs a Plan through it, GPU by GPU
in parallel: checkpoint, act, verify, and put a failed GPU back as it was.

May import: ``migd.errors``, ``migd.command`` (the GPU reset command), ``migd.core``,
``migd.formats`` and pynvml (``nvml`` only). Never the node, the daemon or the verbs.
"""
