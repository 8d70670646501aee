"""What the comparison with mig-parted rests on, and what its model leaves out.

Three parts:

- Slot orders. Without a placement the driver picks a GPU instance's slots in an
  order observed on A100/H100 for the 1g, 2g and 3g profiles; for two H200 profiles
  (1g.18gb+me and 1g.35gb) no source gives it, and the simulator's model file lists
  those orders as synthesized. mig-parted creates every GPU instance without a
  placement, so its figures depend on them; migd places every instance itself, so
  its figures do not. The mig-parted model is run again under every combination of
  plausible orders for the two (:data:`PLAUSIBLE`), both walks of section 1, both
  tie orders.
- A MIG mode change on 1 of 8 GPUs (Ampere: the change needs a GPU reset). mig-parted
  clears and sets the mode on every GPU and resets them all
  (:func:`bench.migparted_model.apply_mode`), then lays out every GPU again; migd
  changes the one GPU. Counted from the simulator's call log and the instances'
  serials.
- The node around a change. mig-parted's systemd unit runs a script
  (``deployments/systemd/service.sh``) that starts several mig-parted processes, each
  initialising NVML, and the package's pre-Hopper hooks file runs
  ``deployments/systemd/hooks.sh``, which stops services and kills device-plugin,
  GPU-feature-discovery and DCGM-exporter containers before a change and starts the
  services at the end of every apply. What migd does comes from its own code
  (``migd.node.change.Change``) for the plans of the same changes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pynvml

from bench.disruption import run_walks, tools
from bench.layouts import Layout, feasible_layouts, text, transitions
from bench.migparted_model import MigPartedModel, apply_mode
from bench.simnode import (
    counts_between,
    default_orders,
    gi_serials,
    init_node,
    read_node,
    reset,
    set_mig,
    stats,
)
from bench.tools import migd_apply
from migd import sim
from migd.core.planner import plan_node
from migd.core.selection import desired_layouts
from migd.formats.config_file import parse_config
from migd.formats.gpu_models import load_model
from migd.gpu.nvml import NvmlAdapter
from migd.node.change import Change

H200 = "H200-SXM-141GB"

# Plausible no-placement slot orders for the H200 profiles whose order is synthesized,
# by GI profile id. The first of each is what the simulator assumes.
PLAUSIBLE: Mapping[int, Mapping[str, tuple[int, ...]]] = {
    20: {  # 1g.18gb+me, starts 0-6
        "as 1g (assumed)": (6, 4, 5, 0, 1, 2, 3),
        "lowest first": (0, 1, 2, 3, 4, 5, 6),
        "highest first": (6, 5, 4, 3, 2, 1, 0),
    },
    15: {  # 1g.35gb, starts 0, 2, 4, 6
        "highest first, as 2g (assumed)": (6, 4, 2, 0),
        "lowest first": (0, 2, 4, 6),
        "as 1g, by quarter": (6, 4, 0, 2),
    },
}


def order_sources(key: str = H200) -> dict[str, Any]:
    """Which GI profiles' no-placement orders a source gives, and which are synthesized."""
    model = load_model(key)
    synthesized = {
        int(m[1]) for s in model.synthesized if (m := re.fullmatch(r"gi\.(\d+)\.default_order", s))
    }
    choice = [gi for gi in model.gi_profiles if len(gi.placements) > 1]
    return {
        "model": model.key,
        "sourced": [gi.short_name for gi in choice if gi.id not in synthesized],
        "synthesized": [gi.short_name for gi in choice if gi.id in synthesized],
        "synthesized_ids": sorted(synthesized),
        "single_placement": [gi.short_name for gi in model.gi_profiles if len(gi.placements) == 1],
    }


def slot_orders(workdir: str, *, random_transitions: int, combinations: int) -> dict[str, Any]:
    """The mig-parted model's call totals under every combination of plausible orders."""
    sources = order_sources()
    if sources["synthesized_ids"] != sorted(PLAUSIBLE):
        raise RuntimeError(
            f"synthesized orders {sources['synthesized_ids']} != {sorted(PLAUSIBLE)}"
        )
    state = f"{workdir}/slot-orders.json"
    layouts = feasible_layouts()
    moves = transitions(random_transitions)
    every = list(tools(workdir))
    migd, models = every[0], every[1:]
    rows = []
    choices = [
        [(pid, label, order) for label, order in PLAUSIBLE[pid].items()] for pid in PLAUSIBLE
    ]
    for combo in list(itertools.product(*choices))[:combinations]:
        orders = {pid: order for pid, _, order in combo}
        with default_orders(H200, orders):
            per_tie = {m.name: run_walks(m, state, layouts, moves) for m in models}
        rows.append(
            {
                "orders": {
                    load_model(H200).gi_by_id(pid).short_name: label  # type: ignore[union-attr]
                    for pid, label, _ in combo
                },
                "tools": per_tie,
            }
        )
    return {
        **sources,
        "plausible": {
            load_model(H200).gi_by_id(pid).short_name: {  # type: ignore[union-attr]
                label: list(order) for label, order in options.items()
            }
            for pid, options in PLAUSIBLE.items()
        },
        "migd": run_walks(migd, state, layouts, moves),
        "combinations": rows,
    }


# ---------------------------------------------------------------------------
# A MIG mode change on one GPU of eight
# ---------------------------------------------------------------------------

A100 = "A100-SXM4-80GB"
A100_BALANCED: Layout = ("1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb")


def _serials(state: str, gpus: Sequence[int]) -> dict[int, frozenset[int]]:
    node = read_node(state)
    return {i: gi_serials(node, i) for i in gpus}


def _mode_migd(state: str, gpus: int) -> dict[str, Any]:
    result = migd_apply(state, dict.fromkeys(range(gpus), A100_BALANCED))
    if result.exit_code != 0:
        raise RuntimeError(f"migd: {[g.reason for g in result.gpus]}")
    return {"reset": sorted(g.index for g in result.gpus if g.reset)}


def _mode_migparted(state: str, gpus: int) -> dict[str, Any]:
    sim.activate(state)
    pynvml.nvmlInit()
    try:
        to_reset = apply_mode(range(gpus), dict.fromkeys(range(gpus), True))
    finally:
        pynvml.nvmlShutdown()
    if to_reset:
        reset(state, to_reset)  # nvidia-smi -r -i <every bus id>
    sim.activate(state)
    pynvml.nvmlInit()
    try:
        model = MigPartedModel()
        wanted = {n: A100_BALANCED.count(n) for n in set(A100_BALANCED)}
        if not all(model.apply(i, wanted).succeeded for i in range(gpus)):
            raise RuntimeError("the mig-parted model failed a GPU")
    finally:
        pynvml.nvmlShutdown()
    return {"reset": sorted(to_reset)}


def _migparted_setup(state: str, gpus: Sequence[int]) -> None:
    sim.activate(state)
    pynvml.nvmlInit()
    try:
        model = MigPartedModel()
        wanted = {n: A100_BALANCED.count(n) for n in set(A100_BALANCED)}
        for i in gpus:
            model.apply(i, wanted)
    finally:
        pynvml.nvmlShutdown()


def mode_change(workdir: str, *, gpus: int = 8) -> dict[str, Any]:
    """GPUs 0-6 hold the balanced layout, GPU 7 has MIG off; the config turns it on."""
    state = f"{workdir}/mode-change.json"
    others = list(range(gpus - 1))
    changed = gpus - 1
    runs = {}
    for name, setup, apply in (
        ("migd", lambda s: migd_apply(s, dict.fromkeys(others, A100_BALANCED)), _mode_migd),
        ("mig-parted model", lambda s: _migparted_setup(s, others), _mode_migparted),
    ):
        init_node(state, gpus, model=A100)
        set_mig(state, changed, False)
        setup(state)
        before = _serials(state, others)
        first = stats(state)
        outcome = apply(state, gpus)
        calls = counts_between(first, stats(state))
        after = _serials(state, others)
        last = stats(state)
        runs[name] = {
            "mutating": calls.mutating,
            "failed": calls.failed,
            "mode_sets": sum(
                n - first.get("nvmlDeviceSetMigMode", {}).get(r, 0)
                for r, n in last.get("nvmlDeviceSetMigMode", {}).items()
            ),
            "gpus_reset": len(outcome["reset"]),
            "other_gpus_touched": sum(before[i] != after[i] for i in others),
            "other_gis_destroyed": sum(len(before[i] - after[i]) for i in others),
            "other_gis_before": sum(len(before[i]) for i in others),
        }
    return {
        "model": A100,
        "gpus": gpus,
        "layout": text(A100_BALANCED),
        "changed_gpu": changed,
        "tools": runs,
    }


# ---------------------------------------------------------------------------
# The node around a change
# ---------------------------------------------------------------------------

# deployments/systemd/hooks.sh: what each hook of the pre-Hopper hooks file stops.
MP_K8S_SERVICES = ("dcgm-exporter.service", "kubelet.service")
MP_DRIVER_SERVICES = ("nvsm.service", "nvidia-dcgm.service")
MP_POD_IMAGES = ("k8s-device-plugin", "gpu-feature-discovery", "dcgm-exporter")


def hook_effects(stages: Sequence[str]) -> dict[str, int]:
    """What the pre-Hopper hooks file (hooks.sh) does over these hook runs."""
    stops = kubelet = kills = starts = 0
    for stage in stages:
        if stage in ("pre-apply-mode", "pre-apply-config"):
            stops += len(MP_K8S_SERVICES)
            kubelet += 1
            kills += 1
        if stage == "pre-apply-mode":
            stops += len(MP_DRIVER_SERVICES)
        if stage == "apply-exit":
            starts += len(MP_K8S_SERVICES) + len(MP_DRIVER_SERVICES)
    return {
        "unit_stops": stops,
        "kubelet_stops": kubelet,
        "pod_kill_rounds": kills,
        "unit_starts": starts,
    }


def migparted_unit(mode: bool, config: bool) -> dict[str, Any]:
    """One run of mig-parted's unit (service.sh) for a change of this kind.

    Processes: generate-config, assert --mode-only, [apply --mode-only --skip-reset,
    apply --mode-only to reset], apply, export; each initialises NVML. Every apply
    runs apply-start and apply-exit; pre-apply-mode when the mode differs (still so
    for the second mode-only apply: the mode is pending until the reset it does),
    pre-apply-config when the instances differ.
    """
    applies: list[list[str]] = []
    if mode:
        applies += [["apply-start", "pre-apply-mode", "apply-exit"]] * 2
    applies.append(["apply-start", *(["pre-apply-config"] if config else []), "apply-exit"])
    processes = 4 + (2 if mode else 0)
    return {
        "processes": processes,
        "nvml_inits": processes,
        "hooks": [stage for a in applies for stage in a],
        **hook_effects([stage for a in applies for stage in a]),
    }


SERVICE_SCENARIOS: tuple[tuple[str, Layout | None, Layout], ...] = (
    # (name, layout of the 8 GPUs before (None: MIG off on the last), layout wanted)
    ("node already right (a boot, a restart)", A100_BALANCED, A100_BALANCED),
    ("instances added only", ("3g.40gb",), ("3g.40gb", "2g.20gb")),
    ("instances destroyed", A100_BALANCED, ("1g.10gb",) * 7),
    ("MIG mode change on 1 of 8 GPUs", None, A100_BALANCED),
)


def _config_text(layout: Layout) -> str:
    devices = ", ".join(f'"{n}": {layout.count(n)}' for n in dict.fromkeys(layout))
    return (
        "version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n"
        f"      mig-devices: {{{devices}}}\n"
    )


def services(workdir: str, *, gpus: int = 8) -> dict[str, Any]:
    """Per change: hooks run, units stopped, processes started, NVML initialisations."""
    state = f"{workdir}/services.json"
    rows = []
    for name, before, after in SERVICE_SCENARIOS:
        init_node(state, gpus, model=A100)
        if before is None:
            set_mig(state, gpus - 1, False)
            migd_apply(state, dict.fromkeys(range(gpus - 1), A100_BALANCED))
        else:
            migd_apply(state, dict.fromkeys(range(gpus), before))
        config = parse_config(_config_text(after).encode(), "<bench>")
        sim.activate(state)
        with NvmlAdapter.open(read_only=True) as nvml:
            snapshot = nvml.snapshot()
        plan = plan_node(snapshot, desired_layouts(snapshot, config.entries("c")))
        change = Change.of(plan)
        first = stats(state)
        migd_apply(state, dict.fromkeys(range(gpus), after))
        inits = sum(
            n - first.get("nvmlInitWithFlags", {}).get(r, 0)
            for r, n in stats(state).get("nvmlInitWithFlags", {}).items()
        )
        hooks = []
        if change.any:
            hooks.append("apply-start")
            if change.mode:
                hooks.append("pre-apply-mode")
            if change.instances:
                hooks.append("pre-apply-config")
            hooks.append("apply-exit")
        rows.append(
            {
                "name": name,
                "migd": {
                    "gpus_changed": len(change.gpus),
                    "processes": 0,  # the running daemon applies it
                    "nvml_inits": inits,
                    "hooks": hooks,
                    # the same hooks file, run by migd
                    **hook_effects(hooks),
                    # or, without hooks, its GPU client units (settings.gpu-clients)
                    "stops_clients": change.stops_clients,
                },
                "mig-parted": migparted_unit(
                    mode=change.mode, config=change.instances or change.mode
                ),
            }
        )
    return {"model": A100, "gpus": gpus, "scenarios": rows}


def measure(workdir: str, *, random_transitions: int, combinations: int) -> dict[str, Any]:
    return {
        "slot_orders": slot_orders(
            workdir, random_transitions=random_transitions, combinations=combinations
        ),
        "mode_change": mode_change(workdir),
        "services": services(workdir),
    }
