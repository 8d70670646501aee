"""The simulated node as a value, and its JSON form (the STATE file).

A :class:`NodeState` holds everything the simulated hardware remembers: the GPUs (model,
index, UUID, PCI bus id, MIG mode current/pending), their GPU and compute instances,
the processes running on them, how the node behaves (flags) and the faults set on it.
Everything is frozen; :mod:`migd.sim.node` computes new values from old ones and
:mod:`migd.sim.store` keeps them in the file.

Every GPU and compute instance carries a ``serial``: a number unique over the node's
life, never reused. Handles encode it, so a handle of a destroyed instance stays
invalid even when a new instance gets the same id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT = "migd-sim/1"


class StateError(ValueError):
    """The STATE file is not a simulated node this version understands."""


@dataclass(frozen=True)
class ComputeInstance:
    id: int
    profile_id: int
    start: int  # on the GI-local compute axis
    size: int
    serial: int


@dataclass(frozen=True)
class GpuInstance:
    id: int
    profile_id: int
    start: int  # on the GPU's memory-slice axis
    size: int
    serial: int
    compute_instances: tuple[ComputeInstance, ...] = ()


@dataclass(frozen=True)
class Gpu:
    index: int
    model: str  # key of a GPU model (migd.formats.gpu_models)
    uuid: str
    bus_id: str  # "00000000:18:00.0"
    mig_current: int = 0
    mig_pending: int = 0
    gpu_instances: tuple[GpuInstance, ...] = ()


@dataclass(frozen=True)
class Process:
    """A process using a GPU: on the whole GPU (MIG off), a GI, or a CI inside one."""

    pid: int
    gpu: int
    gi: int | None = None
    ci: int | None = None
    used_memory_mib: int = 512


@dataclass(frozen=True)
class Flags:
    """How the node behaves, fixed at ``migd sim init``."""

    # A system client (nvidia-persistenced, DCGM) holds every Ampere GPU, so its mode
    # change stays pending until a reset.
    system_clients: bool = True
    # VM passthrough: a GPU cannot be reset (activationStatus RESET_REQUIRED; reboot).
    passthrough: bool = False
    # The caller counts as root; otherwise every mutation gets NO_PERMISSION.
    root: bool = True


@dataclass(frozen=True)
class CallFault:
    """Calls to ``call`` (a C symbol, or ``*``) numbered after+1 .. after+count misbehave.

    Calls are counted from when the fault was set, across every process, only those
    that match (``gpu`` restricts the fault to calls on one GPU). ``count`` None means
    without end.
    """

    call: str
    gpu: int | None = None
    code: int | None = None  # return this instead of calling the driver
    hang_s: float = 0.0  # sleep before the call, outside the lock
    latency_ms: float = 0.0  # likewise, in milliseconds
    after: int = 0
    count: int | None = None
    seen: int = 0


@dataclass(frozen=True)
class KillFault:
    """SIGKILL the caller at the ``at``-th mutating call (counted from when it was set)."""

    at: int
    after_effect: bool = False  # False: before the call changes anything
    seen: int = 0


@dataclass(frozen=True)
class Faults:
    calls: tuple[CallFault, ...] = ()
    kill: KillFault | None = None
    lost_gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class NodeState:
    gpus: tuple[Gpu, ...]
    processes: tuple[Process, ...] = ()
    flags: Flags = field(default_factory=Flags)
    faults: Faults = field(default_factory=Faults)
    next_serial: int = 1


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------


def to_json(node: NodeState) -> dict[str, Any]:
    """The JSON document of ``node`` (what the STATE file holds)."""
    return {
        "format": FORMAT,
        "flags": {
            "system_clients": node.flags.system_clients,
            "passthrough": node.flags.passthrough,
            "root": node.flags.root,
        },
        "next_serial": node.next_serial,
        "gpus": [
            {
                "index": gpu.index,
                "model": gpu.model,
                "uuid": gpu.uuid,
                "bus_id": gpu.bus_id,
                "mig": {"current": gpu.mig_current, "pending": gpu.mig_pending},
                "gpu_instances": [
                    {
                        "id": gi.id,
                        "profile_id": gi.profile_id,
                        "placement": {"start": gi.start, "size": gi.size},
                        "serial": gi.serial,
                        "compute_instances": [
                            {
                                "id": ci.id,
                                "profile_id": ci.profile_id,
                                "placement": {"start": ci.start, "size": ci.size},
                                "serial": ci.serial,
                            }
                            for ci in gi.compute_instances
                        ],
                    }
                    for gi in gpu.gpu_instances
                ],
            }
            for gpu in node.gpus
        ],
        "processes": [
            {
                "pid": p.pid,
                "gpu": p.gpu,
                "gi": p.gi,
                "ci": p.ci,
                "used_memory_mib": p.used_memory_mib,
            }
            for p in node.processes
        ],
        "faults": {
            "calls": [
                {
                    "call": f.call,
                    "gpu": f.gpu,
                    "code": f.code,
                    "hang_s": f.hang_s,
                    "latency_ms": f.latency_ms,
                    "after": f.after,
                    "count": f.count,
                    "seen": f.seen,
                }
                for f in node.faults.calls
            ],
            "kill": None
            if node.faults.kill is None
            else {
                "at": node.faults.kill.at,
                "after_effect": node.faults.kill.after_effect,
                "seen": node.faults.kill.seen,
            },
            "lost_gpus": list(node.faults.lost_gpus),
        },
    }


def from_json(doc: Any) -> NodeState:
    """The node a STATE document describes. Raises :class:`StateError` if it is not one."""
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
        raise StateError(f'not a simulated node (expected "format": "{FORMAT}")')
    try:
        flags = doc["flags"]
        faults = doc["faults"]
        kill = faults["kill"]
        return NodeState(
            gpus=tuple(
                Gpu(
                    index=int(g["index"]),
                    model=str(g["model"]),
                    uuid=str(g["uuid"]),
                    bus_id=str(g["bus_id"]),
                    mig_current=int(g["mig"]["current"]),
                    mig_pending=int(g["mig"]["pending"]),
                    gpu_instances=tuple(
                        GpuInstance(
                            id=int(gi["id"]),
                            profile_id=int(gi["profile_id"]),
                            start=int(gi["placement"]["start"]),
                            size=int(gi["placement"]["size"]),
                            serial=int(gi["serial"]),
                            compute_instances=tuple(
                                ComputeInstance(
                                    id=int(ci["id"]),
                                    profile_id=int(ci["profile_id"]),
                                    start=int(ci["placement"]["start"]),
                                    size=int(ci["placement"]["size"]),
                                    serial=int(ci["serial"]),
                                )
                                for ci in gi["compute_instances"]
                            ),
                        )
                        for gi in g["gpu_instances"]
                    ),
                )
                for g in doc["gpus"]
            ),
            processes=tuple(
                Process(
                    pid=int(p["pid"]),
                    gpu=int(p["gpu"]),
                    gi=None if p["gi"] is None else int(p["gi"]),
                    ci=None if p["ci"] is None else int(p["ci"]),
                    used_memory_mib=int(p.get("used_memory_mib", 512)),
                )
                for p in doc["processes"]
            ),
            flags=Flags(
                system_clients=bool(flags["system_clients"]),
                passthrough=bool(flags["passthrough"]),
                root=bool(flags["root"]),
            ),
            faults=Faults(
                calls=tuple(
                    CallFault(
                        call=str(f["call"]),
                        gpu=None if f["gpu"] is None else int(f["gpu"]),
                        code=None if f["code"] is None else int(f["code"]),
                        hang_s=float(f["hang_s"]),
                        latency_ms=float(f["latency_ms"]),
                        after=int(f["after"]),
                        count=None if f["count"] is None else int(f["count"]),
                        seen=int(f["seen"]),
                    )
                    for f in faults["calls"]
                ),
                kill=None
                if kill is None
                else KillFault(
                    at=int(kill["at"]),
                    after_effect=bool(kill["after_effect"]),
                    seen=int(kill["seen"]),
                ),
                lost_gpus=tuple(int(i) for i in faults["lost_gpus"]),
            ),
            next_serial=int(doc["next_serial"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"malformed simulated node: {exc!r}") from exc
