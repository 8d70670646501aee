"""Faults set on a simulated node: what they do to a call, and how they count.

Pure functions over :class:`migd.sim.state.NodeState`; the counters live in the node (the
STATE file), so "after N calls" counts the calls of every process sharing the node.

- A *call fault* acts on calls to one C symbol (or every symbol, ``*``), optionally on
  one GPU only. Counting starts when it is set: the calls numbered ``after+1`` through
  ``after+count`` that match it are affected (``count`` None: every one from there on).
  A fault on every call from the first (no ``after``, no ``count``) keeps no counter,
  so it costs the calls it slows down no write.
  It makes them return ``code`` instead of reaching the driver, and/or delays them
  (``hang_s``, ``latency_ms``); the delay is spent outside the state lock.
- A *kill fault* SIGKILLs the calling process at the N-th mutating call counted across
  processes from when it is set: before the call changes anything (default), or after
  the change is written but before the call returns. It fires once.
- A *lost GPU* answers every call on it with GPU_IS_LOST.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from migd.core import nvml_codes
from migd.sim.state import CallFault, Faults, KillFault, NodeState
from migd.sim.symbols import ANY_CALL


@dataclass(frozen=True)
class Effect:
    """What the faults do to one call: a return code in place of the call, and a delay."""

    code: int | None = None
    delay_s: float = 0.0


def _matches(fault: CallFault, symbol: str, gpu: int | None) -> bool:
    return fault.call in (symbol, ANY_CALL) and (fault.gpu is None or fault.gpu == gpu)


def _spent(fault: CallFault) -> bool:
    return fault.count is not None and fault.seen >= fault.after + fault.count


def _counts(fault: CallFault) -> bool:
    # A fault on every call from the first on needs no counter: nothing to write.
    return fault.after > 0 or fault.count is not None


def effect_without_counting(faults: Faults, symbol: str, gpu: int | None) -> Effect | None:
    """The effect on this call when no live fault needs to count it; None when one does
    (then :func:`take` must count the call under the exclusive lock)."""
    live = [f for f in faults.calls if _matches(f, symbol, gpu) and not _spent(f)]
    if any(_counts(f) for f in live):
        return None
    codes_set = [f.code for f in live if f.code is not None]
    delay = sum(f.hang_s + f.latency_ms / 1000.0 for f in live)
    return Effect(code=codes_set[0] if codes_set else None, delay_s=delay)


def take(node: NodeState, symbol: str, gpu: int | None) -> tuple[NodeState, Effect]:
    """Count one call to ``symbol`` on ``gpu``; the node with new counters and the effect."""
    code: int | None = None
    delay = 0.0
    updated = []
    for fault in node.faults.calls:
        if _matches(fault, symbol, gpu) and not _spent(fault):
            if _counts(fault):
                fault = dataclasses.replace(fault, seen=fault.seen + 1)
            if fault.seen > fault.after:
                delay += fault.hang_s + fault.latency_ms / 1000.0
                if code is None:
                    code = fault.code
        updated.append(fault)
    faults = dataclasses.replace(node.faults, calls=tuple(updated))
    return dataclasses.replace(node, faults=faults), Effect(code=code, delay_s=delay)


def count_mutation(node: NodeState) -> tuple[NodeState, KillFault | None]:
    """Count one mutating call for the kill fault; returns the fault if it fires now."""
    kill = node.faults.kill
    if kill is None:
        return node, None
    seen = kill.seen + 1
    if seen >= kill.at:
        # Fired: gone from the node, so the restarted caller is not killed again.
        return dataclasses.replace(node, faults=dataclasses.replace(node.faults, kill=None)), kill
    kill = dataclasses.replace(kill, seen=seen)
    return dataclasses.replace(node, faults=dataclasses.replace(node.faults, kill=kill)), None


# ---------------------------------------------------------------------------
# Setting faults (``migd sim fault``)
# ---------------------------------------------------------------------------


def add_call_fault(node: NodeState, fault: CallFault) -> NodeState:
    if fault.gpu is not None and not 0 <= fault.gpu < len(node.gpus):
        raise ValueError(f"no GPU {fault.gpu} on this node ({len(node.gpus)} GPUs)")
    fault = dataclasses.replace(fault, seen=0)
    return dataclasses.replace(
        node, faults=dataclasses.replace(node.faults, calls=(*node.faults.calls, fault))
    )


def set_kill(node: NodeState, at: int, after_effect: bool) -> NodeState:
    if at < 1:
        raise ValueError(f"--kill-at counts from 1, not {at}")
    kill = KillFault(at=at, after_effect=after_effect)
    return dataclasses.replace(node, faults=dataclasses.replace(node.faults, kill=kill))


def add_lost_gpu(node: NodeState, index: int) -> NodeState:
    if not 0 <= index < len(node.gpus):
        raise ValueError(f"no GPU {index} on this node ({len(node.gpus)} GPUs)")
    lost = tuple(sorted({*node.faults.lost_gpus, index}))
    return dataclasses.replace(node, faults=dataclasses.replace(node.faults, lost_gpus=lost))


def clear(node: NodeState) -> NodeState:
    return dataclasses.replace(node, faults=Faults())


def describe(fault: CallFault) -> str:
    """One line for ``migd sim show``."""
    what = []
    if fault.code is not None:
        what.append(f"returns {nvml_codes.code_name(fault.code)}")
    if fault.hang_s:
        what.append(f"hangs {fault.hang_s:g} s")
    if fault.latency_ms:
        what.append(f"+{fault.latency_ms:g} ms")
    where = f" on GPU {fault.gpu}" if fault.gpu is not None else ""
    effect = ", ".join(what) or "no effect"
    if not _counts(fault):
        return f"{fault.call}{where}: {effect}; every call"
    span = "every call" if fault.count is None else f"{fault.count} call(s)"
    state = "spent" if _spent(fault) else f"{fault.seen} seen"
    return f"{fault.call}{where}: {effect}; after {fault.after}, {span} ({state})"
