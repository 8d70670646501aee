"""Configs derived from a node: ``migd export`` and ``migd generate-config``. Pure.

``export`` writes the node's current geometry as a mig-parted config, merged exactly
as mig-parted merges it (``mergeMigConfigSpecs``): one entry per GPU first, then
GPUs with equal (mig-enabled, mig-devices) merged; a device filter is dropped when
the node has one PCI device id, written as a plain string when an entry has one;
an entry whose devices cover every GPU of its filters says ``all``; a single entry
left loses its filter.

``generate-config`` writes all-disabled, all-enabled, all-balanced and one
all-<profile> config per GPU-instance profile (maximum count) from the GPUs' own
profile tables, named as mig-parted names them (``+`` becomes ``.`` in config
names), with device filters when the node mixes GPU models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from migd.core.layout import GiProfile, GpuState, NodeSnapshot
from migd.core.names import observed_layout
from migd.core.profiles import ProfileName, ProfileNameError
from migd.formats import CONFIG_VERSION, DEFAULT_LABEL

# all-balanced per compute-slice total (mig-parted's balancedFormula): G → count.
_BALANCED = {7: {1: 2, 2: 1, 3: 1}, 4: {1: 2, 2: 1}}


@dataclass(frozen=True)
class ExportEntry:
    """One config entry before merging: a GPU index, its PCI filter and its layout.

    After merging, ``devices`` is a sorted index list or ``"all"``, and
    ``device_filter`` is a sorted list, one string, or None.
    """

    devices: tuple[int, ...] | str
    mig_enabled: bool
    mig_devices: tuple[tuple[str, int], ...] = ()
    device_filter: tuple[str, ...] | str | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.device_filter is not None:
            out["device-filter"] = (
                self.device_filter
                if isinstance(self.device_filter, str)
                else list(self.device_filter)
            )
        out["devices"] = self.devices if isinstance(self.devices, str) else list(self.devices)
        out["mig-enabled"] = self.mig_enabled
        out["mig-devices"] = dict(self.mig_devices)
        return out


def gpu_entry(gpu: GpuState) -> ExportEntry:
    """The unmerged entry of one GPU: its index, its primary PCI id, what it holds."""
    enabled = gpu.mig_capable and gpu.mig_enabled
    return ExportEntry(
        devices=(gpu.index,),
        mig_enabled=enabled,
        mig_devices=observed_layout(gpu) if enabled else (),
        device_filter=(gpu.device_filter,),
    )


def merge_entries(specs: Sequence[ExportEntry]) -> tuple[ExportEntry, ...]:
    """mig-parted's merge of per-GPU entries (each with one device and one filter)."""
    merged: list[tuple[ExportEntry, list[int], list[str]]] = []
    for spec in specs:
        devices, filters = list(spec.devices), list(spec.device_filter or ())
        for i, (first, m_devices, m_filters) in enumerate(merged):
            if first.mig_enabled == spec.mig_enabled and _same_devices(
                first.mig_devices, spec.mig_devices
            ):
                merged[i] = (
                    first,
                    sorted({*m_devices, *devices}),
                    sorted({*m_filters, *filters}),
                )
                break
        else:
            merged.append((spec, sorted(devices), sorted(filters)))

    # Every GPU index per filter (each input entry carries exactly one filter).
    filter_devices: dict[str, set[int]] = {}
    for spec in specs:
        for f in spec.device_filter or ():
            filter_devices.setdefault(f, set()).update(spec.devices)

    result: list[ExportEntry] = []
    for first, devices, filters in merged:
        device_filter: tuple[str, ...] | str | None
        if len(filter_devices) == 1:
            device_filter = None
        elif len(filters) == 1:
            device_filter = filters[0]
        else:
            device_filter = tuple(filters)
        covered = sorted(set().union(*(filter_devices.get(f, set()) for f in filters)))
        result.append(
            ExportEntry(
                devices="all" if devices == covered else tuple(devices),
                mig_enabled=first.mig_enabled,
                mig_devices=first.mig_devices,
                device_filter=device_filter,
            )
        )
    if len(result) == 1:
        only = result[0]
        result[0] = ExportEntry(only.devices, only.mig_enabled, only.mig_devices, None)
    return tuple(result)


def _same_devices(a: Sequence[tuple[str, int]], b: Sequence[tuple[str, int]]) -> bool:
    # mig-parted compares the maps, not their order.
    return dict(a) == dict(b)


def export_config(snapshot: NodeSnapshot, label: str = DEFAULT_LABEL) -> dict[str, Any]:
    """The node's current geometry as a mig-parted config document."""
    entries = merge_entries([gpu_entry(g) for g in sorted(snapshot.gpus, key=lambda g: g.index)])
    return {
        "version": CONFIG_VERSION,
        "mig-configs": {label: [e.to_dict() for e in entries]},
    }


# ---------------------------------------------------------------------------
# generate-config
# ---------------------------------------------------------------------------


def config_name(profile: str) -> str:
    """mig-parted's config name for a profile: ``1g.24gb+me`` → ``all-1g.24gb.me``."""
    return "all-" + profile.replace("+", ".")


def _is_base(profile: GiProfile) -> bool:
    try:
        parsed = ProfileName.parse(profile.name)
    except ProfileNameError:
        return False
    return not parsed.attributes


def _balanced(profiles: Sequence[GiProfile]) -> tuple[tuple[str, int], ...] | None:
    """mig-parted's all-balanced layout for one GPU model, or None when it has none.

    Per slice count it takes the base profile (no +me/+gfx) with the most instances,
    the smallest-memory variant; ties go to the lower profile index.
    """
    base = [p for p in profiles if _is_base(p)]
    total = max((p.slice_count for p in base), default=0)
    formula = _BALANCED.get(total)
    if formula is None:
        return None
    chosen = []
    for g, count in sorted(formula.items()):
        candidates = [p for p in base if p.slice_count == g]
        if not candidates:
            return None
        best = min(candidates, key=lambda p: (-p.instance_count, p.index))
        chosen.append((best.name, count))
    return tuple(chosen)


def generate_config(snapshot: NodeSnapshot) -> dict[str, Any]:
    """mig-parted's ``generate-config`` document from the GPUs' own profile tables."""
    models: dict[str, tuple[GiProfile, ...]] = {}
    for gpu in sorted(snapshot.gpus, key=lambda g: g.index):
        if gpu.mig_capable and gpu.profiles:
            models.setdefault(gpu.device_filter, gpu.profiles)
    mixed = len(models) > 1

    def entry(layout: dict[str, int], filters: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if mixed:
            out["device-filter"] = sorted(filters)
        out.update({"devices": "all", "mig-enabled": True, "mig-devices": layout})
        return out

    configs: dict[str, list[dict[str, Any]]] = {
        "all-disabled": [{"devices": "all", "mig-enabled": False}],
        "all-enabled": [{"devices": "all", "mig-enabled": True, "mig-devices": {}}],
    }
    balanced = []
    for device_id in sorted(models):
        layout = _balanced(models[device_id])
        if layout is not None:
            balanced.append(entry(dict(layout), [device_id]))
    if balanced:
        configs["all-balanced"] = balanced

    # Profile name → max count → device ids (a name may allow other counts elsewhere).
    by_name: dict[str, dict[int, list[str]]] = {}
    for device_id, profiles in models.items():
        for p in profiles:
            by_name.setdefault(p.name, {}).setdefault(p.instance_count, []).append(device_id)
    for name in sorted(by_name):
        configs[config_name(name)] = [
            entry({name: count}, devices) for count, devices in sorted(by_name[name].items())
        ]
    return {"version": CONFIG_VERSION, "mig-configs": configs}


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style, except scalar lists in flow style (``devices: [0, 1]``), as mig-parted."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(x, (list, dict)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def render(document: dict[str, Any], output_format: str) -> str:
    """A config document as ``yaml`` or ``json`` text."""
    if output_format == "json":
        return json.dumps(document, indent=2) + "\n"
    if output_format == "yaml":
        return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    raise ValueError(f"unknown output format {output_format!r} (yaml or json)")
