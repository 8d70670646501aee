"""export's merge rules (mig-parted's seven cases) and generate-config, pure."""

from __future__ import annotations

import yaml

from migd.core.gpu_models import blank_gpu
from migd.core.layout import ComputeInstance, GpuInstance, NodeSnapshot, Placement
from migd.formats.export import (
    ExportEntry,
    export_config,
    generate_config,
    gpu_entry,
    merge_entries,
    render,
)
from migd.formats.gpu_models import load_model

A40 = "A100-SXM4-40GB"
A80 = "A100-SXM4-80GB"


def one(index: int, device_filter: str, enabled: bool) -> ExportEntry:
    return ExportEntry(devices=(index,), mig_enabled=enabled, device_filter=(device_filter,))


def entry(devices, enabled, device_filter=None) -> ExportEntry:  # type: ignore[no-untyped-def]
    return ExportEntry(devices=devices, mig_enabled=enabled, device_filter=device_filter)


# The cases of mig-parted's cmd/nvidia-mig-parted/export/export_test.go, same names.


def test_empty() -> None:
    assert merge_entries([]) == ()


def test_single_device() -> None:
    assert merge_entries([one(0, A40, False)]) == (entry("all", False),)


def test_single_filter_multi_device_same_config() -> None:
    assert merge_entries([one(0, A40, False), one(1, A40, False)]) == (entry("all", False),)


def test_single_filter_multi_device_different_config() -> None:
    assert merge_entries([one(0, A40, False), one(1, A40, True)]) == (
        entry((0,), False),
        entry((1,), True),
    )


def test_multi_filter_same_config() -> None:
    assert merge_entries([one(0, A40, False), one(1, A80, False)]) == (entry("all", False),)


def test_multi_filter_same_config_per_filter() -> None:
    merged = merge_entries(
        [one(0, A40, False), one(1, A40, False), one(2, A80, True), one(3, A80, True)]
    )
    assert merged == (entry("all", False, A40), entry("all", True, A80))


def test_multi_filter_different_config_per_filter_common_across_devices() -> None:
    merged = merge_entries(
        [one(0, A40, False), one(1, A40, True), one(2, A80, False), one(3, A80, True)]
    )
    assert merged == (
        entry((0, 2), False, (A40, A80)),
        entry((1, 3), True, (A40, A80)),
    )


def test_layouts_compare_as_maps_not_lists() -> None:
    a = ExportEntry((0,), True, (("1g.18gb", 2), ("3g.71gb", 1)), ("0x233510DE",))
    b = ExportEntry((1,), True, (("3g.71gb", 1), ("1g.18gb", 2)), ("0x233510DE",))
    assert merge_entries([a, b]) == (ExportEntry("all", True, a.mig_devices, None),)


# --- from GPU state ------------------------------------------------------------------


def h200(index: int, instances=(), enabled=True):  # type: ignore[no-untyped-def]
    gpu = blank_gpu(load_model("H200"), index, mig_enabled=enabled)
    return gpu.__class__(**{**gpu.__dict__, "instances": tuple(instances)})


def test_export_names_gpu_profiles_and_compute_instances() -> None:
    table = {p.name: p for p in h200(0).profiles}
    three = table["3g.71gb"]
    full = three.full_ci()
    one_c = next(c for c in three.ci_profiles if c.name == "1c.3g.71gb")
    # A GI with its full CI is named like the GI; one with 1c CIs by the CI names.
    holding = h200(
        0,
        [
            GpuInstance(
                1, three.id, Placement(0, 4), (ComputeInstance(0, full.id, Placement(0, 4)),)
            ),
            GpuInstance(
                2,
                three.id,
                Placement(4, 4),
                tuple(ComputeInstance(i, one_c.id, Placement(i, 1)) for i in range(2)),
            ),
        ],
    )
    gpus = [holding, h200(1), h200(2, enabled=False)]
    doc = export_config(NodeSnapshot(tuple(gpus)), "now")
    assert doc == {
        "version": "v1",
        "mig-configs": {
            "now": [
                {
                    "devices": [0],
                    "mig-enabled": True,
                    "mig-devices": {"1c.3g.71gb": 2, "3g.71gb": 1},
                },
                {"devices": [1], "mig-enabled": True, "mig-devices": {}},
                {"devices": [2], "mig-enabled": False, "mig-devices": {}},
            ]
        },
    }
    assert gpu_entry(gpus[1]).device_filter == ("0x233510DE",)


def test_render_yaml_is_mig_parted_shaped_and_reparses() -> None:
    doc = export_config(NodeSnapshot((h200(0), h200(1))))
    text = render(doc, "yaml")
    assert "devices: all" in text
    assert yaml.safe_load(text) == doc
    assert render(doc, "json").startswith("{")


# --- generate-config -----------------------------------------------------------------


def test_generate_config_single_model() -> None:
    doc = generate_config(NodeSnapshot(tuple(h200(i) for i in range(8))))
    configs = doc["mig-configs"]
    assert configs["all-disabled"] == [{"devices": "all", "mig-enabled": False}]
    assert configs["all-enabled"] == [{"devices": "all", "mig-enabled": True, "mig-devices": {}}]
    assert configs["all-balanced"] == [
        {
            "devices": "all",
            "mig-enabled": True,
            "mig-devices": {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1},
        }
    ]
    # Every GI profile, at its maximum count, '+' spelled '.' in the config name.
    assert configs["all-1g.18gb"][0]["mig-devices"] == {"1g.18gb": 7}
    assert configs["all-1g.18gb.me"][0]["mig-devices"] == {"1g.18gb+me": 1}
    assert configs["all-1g.35gb"][0]["mig-devices"] == {"1g.35gb": 4}
    assert configs["all-7g.141gb"][0]["mig-devices"] == {"7g.141gb": 1}
    assert all("device-filter" not in e for c in configs.values() for e in c)


def test_generate_config_mixed_models_get_filters() -> None:
    gpus = (h200(0), blank_gpu(load_model("A100-SXM4-40GB"), 1), blank_gpu(load_model("L40S"), 2))
    configs = generate_config(NodeSnapshot(gpus))["mig-configs"]
    balanced = {tuple(e["device-filter"]): e["mig-devices"] for e in configs["all-balanced"]}
    assert balanced == {
        ("0x20B010DE",): {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1},
        ("0x233510DE",): {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1},
    }
    assert configs["all-1g.5gb"] == [
        {
            "device-filter": ["0x20B010DE"],
            "devices": "all",
            "mig-enabled": True,
            "mig-devices": {"1g.5gb": 7},
        }
    ]
