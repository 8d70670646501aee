"""Simulated nodes for the benchmarks: make one, slow its calls down, count its calls.

Everything goes through the simulator's own API (``migd.sim``): the node is written
with the store ``migd sim init`` uses, latencies are call faults as ``migd sim fault
--call SYMBOL --latency MS`` sets them, and call counts are the call log that
``migd sim stats`` reads. A fresh node also starts a fresh call log, so counts never
mix two scenarios.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from migd.core.gpu_models import GpuModel
from migd.sim import faults as sim_faults
from migd.sim import node as sim_node
from migd.sim.state import CallFault, Flags, NodeState
from migd.sim.store import StateStore, Transaction
from migd.sim.symbols import MUTATING

H200 = "H200-SXM-141GB"

GI_CREATES = ("nvmlDeviceCreateGpuInstance", "nvmlDeviceCreateGpuInstanceWithPlacement")
CI_CREATES = (
    "nvmlGpuInstanceCreateComputeInstance",
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
)
GI_DESTROY = "nvmlGpuInstanceDestroy"
CI_DESTROY = "nvmlComputeInstanceDestroy"

Stats = Mapping[str, Mapping[str, int]]


def init_node(path: str, gpus: int, *, model: str = H200, mig_enabled: bool = True) -> NodeState:
    """A fresh node of ``gpus`` GPUs of ``model``, no instances, and an empty call log.

    MIG is switched on in the node itself rather than through SetMigMode: the
    benchmarks compare how tools lay out instances, not how they change modes, and
    a Hopper GPU applies the mode at once anyway.
    """
    node = sim_node.new_node([model] * gpus, seed=os.path.basename(path), flags=Flags())
    if mig_enabled:
        node = dataclasses.replace(
            node,
            gpus=tuple(dataclasses.replace(g, mig_current=1, mig_pending=1) for g in node.gpus),
        )
    store = StateStore(path)
    try:
        store.create(node)
    finally:
        store.close()
    return node


def read_node(path: str) -> NodeState:
    store = StateStore(path)
    try:
        return store.read()
    finally:
        store.close()


def stats(path: str) -> dict[str, dict[str, int]]:
    """``migd sim stats STATE --json``: {symbol: {result: count}} since the node was made."""
    store = StateStore(path)
    try:
        return store.stats()
    finally:
        store.close()


def _change(path: str, change: object) -> None:
    store = StateStore(path)

    def run(tx: Transaction) -> None:
        tx.commit(change(tx.node))  # type: ignore[operator]

    try:
        store.transaction(run)
    finally:
        store.close()


def set_latencies(path: str, latencies_ms: Mapping[str, float]) -> None:
    """One ``migd sim fault --call SYMBOL --latency MS`` per entry, on every GPU."""

    def change(node: NodeState) -> NodeState:
        for symbol, ms in latencies_ms.items():
            node = sim_faults.add_call_fault(node, CallFault(call=symbol, latency_ms=ms))
        return node

    _change(path, change)


def set_mig(path: str, index: int, enabled: bool) -> None:
    """GPU ``index`` with MIG on or off at once (as after a reboot), no instances."""
    mode = 1 if enabled else 0

    def change(node: NodeState) -> NodeState:
        gpu = dataclasses.replace(
            node.gpus[index], mig_current=mode, mig_pending=mode, gpu_instances=()
        )
        return sim_node.replace_gpu(node, gpu)

    _change(path, change)


def reset(path: str, indices: Sequence[int]) -> None:
    """``migd sim reset`` (what ``nvidia-smi -r -i`` does) on these GPUs."""
    _change(path, lambda node: sim_node.reset_gpus(node, indices))


@contextlib.contextmanager
def default_orders(key: str, orders: Mapping[int, tuple[int, ...]]) -> Iterator[None]:
    """The simulated driver trying ``orders`` (GI profile id -> starts) when a GPU
    instance of GPU model ``key`` is created without a placement, in this process.

    For the slot orders no source confirms (the model file's ``synthesized``): the
    benchmarks run the mig-parted model under each plausible order. migd always gives
    a placement, so no order changes what it does.
    """
    original = sim_node.load_model

    @functools.cache
    def load(name: str) -> GpuModel:
        model = original(name)
        if model.key != key:
            return model
        profiles = tuple(
            dataclasses.replace(gi, default_order=orders.get(gi.id, gi.default_order))
            for gi in model.gi_profiles
        )
        return dataclasses.replace(model, gi_profiles=profiles)

    sim_node.load_model = load  # type: ignore[assignment]
    try:
        yield
    finally:
        sim_node.load_model = original  # type: ignore[assignment]


def clear_faults(path: str) -> None:
    """``migd sim fault STATE --clear``."""
    _change(path, sim_faults.clear)


@dataclass(frozen=True)
class CallCounts:
    """NVML calls of one scenario, from the call log (differences of two ``stats``)."""

    mutating: int = 0
    failed: int = 0  # mutating calls that did not return SUCCESS
    gi_creates: int = 0
    gi_creates_failed: int = 0
    ci_creates: int = 0
    ci_creates_failed: int = 0
    gi_destroys: int = 0
    ci_destroys: int = 0
    queries: int = 0  # every other call (reads, init, shutdown)

    def __add__(self, other: CallCounts) -> CallCounts:
        pairs = zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
        return CallCounts(*(a + b for a, b in pairs))


def _count(stats_: Stats, symbols: tuple[str, ...] | frozenset[str], failed: bool) -> int:
    total = 0
    for symbol in symbols:
        for result, n in stats_.get(symbol, {}).items():
            if not failed or result != "SUCCESS":
                total += n
    return total


def counts_between(before: Stats, after: Stats) -> CallCounts:
    """What was called between two ``stats`` readings."""
    delta: dict[str, dict[str, int]] = {}
    for symbol, results in after.items():
        for result, n in results.items():
            d = n - before.get(symbol, {}).get(result, 0)
            if d:
                delta.setdefault(symbol, {})[result] = d
    queries = frozenset(delta) - MUTATING
    return CallCounts(
        mutating=_count(delta, MUTATING, False),
        failed=_count(delta, MUTATING, True),
        gi_creates=_count(delta, GI_CREATES, False),
        gi_creates_failed=_count(delta, GI_CREATES, True),
        ci_creates=_count(delta, CI_CREATES, False),
        ci_creates_failed=_count(delta, CI_CREATES, True),
        gi_destroys=_count(delta, (GI_DESTROY,), False),
        ci_destroys=_count(delta, (CI_DESTROY,), False),
        queries=_count(delta, queries, False),
    )


def gi_serials(node: NodeState, gpu: int) -> frozenset[int]:
    """The GPU instances of one GPU by serial: a serial is never reused, so an instance
    destroyed and created again at the same place counts as a new one."""
    return frozenset(gi.serial for gi in node.gpus[gpu].gpu_instances)
