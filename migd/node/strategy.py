"""Does the node's MIG layout suit the Kubernetes device plugin's MIG strategy?

Pure: a NodeSnapshot in, a :class:`StrategyCheck` out. The device plugin (and GPU
Feature Discovery) judge a node by its MIG devices, one per compute instance, named
by profile as the config names them (``planner.spec_names``: ``1g.18gb``, or
``1c.2g.35gb`` for a partial compute instance). Their rules (ecosystem.md,
"Kubernetes node side"):

``none``
    MIG is ignored; whole GPUs are advertised. Always compatible.
``single``
    MIG devices are advertised as ``nvidia.com/gpu``, so they must be
    interchangeable: every GPU MIG-enabled, none without MIG devices, exactly one
    MIG device type on the whole node. Otherwise the plugin fails and GFD labels
    the node ``<model>-MIG-INVALID``.
``mixed``
    One resource per MIG device type (``nvidia.com/mig-1g.18gb``). A MIG-enabled
    GPU with no MIG device is a warning in recent plugins and fatal at start in
    some versions, so it counts as incompatible. GPUs with MIG off are fine.

A GPU instance without a compute instance offers no device, so it does not count.
The current MIG mode is judged (a pending change is not seen by the plugin yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from migd.core.layout import GpuState, NodeSnapshot, gi_spec
from migd.core.names import name_order, spec_names

Strategy = Literal["none", "single", "mixed"]
STRATEGIES: tuple[Strategy, ...] = ("none", "single", "mixed")


@dataclass(frozen=True)
class StrategyCheck:
    """The verdict for one strategy, with one sentence per reason it fails."""

    strategy: Strategy
    compatible: bool
    reasons: tuple[str, ...] = ()
    device_types: tuple[str, ...] = ()  # MIG device types on the node, smallest first

    def summary(self) -> str:
        """One line for logs and ``migd status``."""
        if self.compatible:
            return f"the layout suits the device plugin's {self.strategy} strategy"
        return (
            f"the layout does not suit the device plugin's {self.strategy} strategy: "
            + "; ".join(self.reasons)
        )


def device_types(gpu: GpuState) -> tuple[str, ...]:
    """The MIG device types ``gpu`` offers (one name per kind of compute instance)."""
    if not gpu.mig_enabled:
        return ()
    names = {
        name
        for gi in gpu.instances
        if gi.compute_instances
        for name in spec_names(gpu, gi_spec(gi))
    }
    return tuple(sorted(names, key=name_order))


def _gpus(indices: list[int]) -> str:
    return ("GPU " if len(indices) == 1 else "GPUs ") + ", ".join(str(i) for i in indices)


def check_strategy(strategy: Strategy, snapshot: NodeSnapshot) -> StrategyCheck:
    """Judge ``snapshot`` against the device plugin's ``strategy`` (see the module doc)."""
    per_gpu = {gpu.index: device_types(gpu) for gpu in snapshot.gpus}
    every_type = {name for types in per_gpu.values() for name in types}
    all_types = tuple(sorted(every_type, key=name_order))
    reasons: list[str] = []
    if strategy == "none":
        return StrategyCheck(strategy, True, (), all_types)
    mig_off = [g.index for g in snapshot.gpus if not g.mig_enabled]
    empty = [g.index for g in snapshot.gpus if g.mig_enabled and not per_gpu[g.index]]
    if strategy == "single":
        if mig_off:
            reasons.append(
                f"{_gpus(mig_off)} ha{'s' if len(mig_off) == 1 else 've'} MIG disabled; "
                "single needs MIG on every GPU"
            )
        if empty:
            reasons.append(f"{_gpus(empty)} ha{'s' if len(empty) == 1 else 've'} no MIG device")
        if len(all_types) > 1:
            where = ", ".join(
                f"{name} on {_gpus([i for i, types in per_gpu.items() if name in types])}"
                for name in all_types
            )
            reasons.append(
                f"the node has {len(all_types)} MIG device types ({where}); "
                "single needs exactly one"
            )
    elif strategy == "mixed":
        if empty:
            reasons.append(
                f"{_gpus(empty)} ha{'s' if len(empty) == 1 else 've'} MIG enabled but no MIG "
                "device; the device plugin may refuse to start"
            )
    else:
        raise ValueError(f"unknown device-plugin strategy {strategy!r}")
    return StrategyCheck(strategy, not reasons, tuple(reasons), all_types)


# How the check of the configured strategy travels in ``DaemonView.extra`` (text
# values), for ``migd status`` and the state file.
EXTRA_STRATEGY = "device_plugin_strategy"
EXTRA_COMPATIBLE = "device_plugin_strategy_compatible"
EXTRA_PROBLEMS = "device_plugin_strategy_problems"


def strategy_extra(strategy: Strategy, snapshot: NodeSnapshot) -> dict[str, str]:
    """The check of ``snapshot`` as ``DaemonView.extra`` entries."""
    check = check_strategy(strategy, snapshot)
    extra = {EXTRA_STRATEGY: strategy, EXTRA_COMPATIBLE: "true" if check.compatible else "false"}
    if check.reasons:
        extra[EXTRA_PROBLEMS] = "; ".join(check.reasons)
    return extra
