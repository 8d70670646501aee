"""Selection: which GPU gets which layout, resolved against each GPU's own profile table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest
from paths import anchor
from planning_support import A30, A100_40GB, H200, apply_plan, gpu, l40s, profile_named

from migd.core.compare import layout_matches
from migd.core.config import ConfigEntry, DeviceFilter
from migd.core.layout import DesiredGpu, GiSpec, GpuState, NodeSnapshot
from migd.core.names import describe, observed_layout
from migd.core.planner import plan_gpu
from migd.core.selection import SelectionError, desired_layouts, resolve_profile
from migd.errors import InvalidRequest
from migd.formats.config_file import parse_config


def entry(
    mig_devices: Mapping[str, int] | None = None,
    *,
    devices: str | Sequence[int] = "all",
    enabled: bool = True,
    filters: Sequence[str] = (),
    n: int = 0,
) -> ConfigEntry:
    return ConfigEntry(
        devices=devices if isinstance(devices, str) else tuple(devices),
        device_filters=tuple(DeviceFilter.parse(f) for f in filters),
        mig_enabled=enabled,
        mig_devices=tuple((mig_devices or {}).items()) if enabled else (),
        path=f"mig-configs.test[{n}]",
        line=10 + n,
    )


def node(*gpus: GpuState) -> NodeSnapshot:
    return NodeSnapshot(tuple(gpus))


def layouts(snapshot: NodeSnapshot, *entries: ConfigEntry) -> dict[int, str]:
    """GPU index → described layout, for the GPUs the config covers."""
    return {d.index: describe(snapshot.gpu(d.index), d) for d in desired_layouts(snapshot, entries)}


def problems(snapshot: NodeSnapshot, *entries: ConfigEntry) -> tuple[str, ...]:
    with pytest.raises(SelectionError) as caught:
        desired_layouts(snapshot, entries)
    assert isinstance(caught.value, InvalidRequest)
    return caught.value.problems


# ---------------------------------------------------------------------------
# Which GPUs an entry covers
# ---------------------------------------------------------------------------


def test_devices_all_and_index_lists() -> None:
    four = node(*(gpu(H200, i) for i in range(4)))
    assert layouts(four, entry({"3g.71gb": 2})) == dict.fromkeys(range(4), "3g.71gb×2")
    assert layouts(four, entry({"3g.71gb": 2}, devices=[1, 3])) == {
        1: "3g.71gb×2",
        3: "3g.71gb×2",
    }
    # Indices the node does not have match nothing (mig-parted does the same).
    assert layouts(four, entry({"1g.18gb": 1}, devices=[3, 9])) == {3: "1g.18gb"}


def test_device_filters_with_and_without_subsystem() -> None:
    other_board = replace(gpu(H200, 1), pci_subsystem_id=0x18C010DE)
    snapshot = node(gpu(H200, 0), other_board, gpu(A100_40GB, 2))
    assert layouts(snapshot, entry({"7g.141gb": 1}, filters=["0x233510DE"])) == {
        0: "7g.141gb",
        1: "7g.141gb",
    }
    assert layouts(snapshot, entry({"7g.141gb": 1}, filters=["0x233510de:0x18BF10DE"])) == {
        0: "7g.141gb"
    }
    assert layouts(snapshot, entry({"7g.40gb": 1}, filters=["0x20B110DE", "0x20B010DE"])) == {
        2: "7g.40gb"
    }


def test_later_entries_win() -> None:
    snapshot = node(*(gpu(H200, i) for i in range(3)))
    assert layouts(
        snapshot,
        entry({"1g.18gb": 7}, n=0),
        entry({"3g.71gb": 2}, devices=[2], n=1),
        entry(enabled=False, devices=[0], n=2),
    ) == {0: "MIG disabled", 1: "1g.18gb×7", 2: "3g.71gb×2"}


def test_gpus_without_mig_are_skipped_or_refused_as_mig_parted_does() -> None:
    snapshot = node(gpu(H200, 0), l40s(1))
    assert layouts(snapshot, entry({"3g.71gb": 2})) == {0: "3g.71gb×2"}
    assert layouts(snapshot, entry(enabled=False, devices=[0, 1])) == {0: "MIG disabled"}
    (problem,) = problems(snapshot, entry({"3g.71gb": 1}, devices=[0, 1]))
    assert "GPU 1 (NVIDIA L40S) is not MIG-capable" in problem
    assert problem.startswith("mig-configs.test[0] (line 10):")


def test_unlisted_gpus_are_not_judged() -> None:
    # 3g.71gb means nothing on the A100 at index 1, which the entry does not cover.
    snapshot = node(gpu(H200, 0), gpu(A100_40GB, 1))
    desired = desired_layouts(snapshot, [entry({"3g.71gb": 2}, devices=[0])])
    assert [d.index for d in desired] == [0]


# ---------------------------------------------------------------------------
# Resolving profile names against the GPU's own table
# ---------------------------------------------------------------------------


def test_unknown_profile_names_gpu_profile_and_choices() -> None:
    snapshot = node(gpu(H200, 0), gpu(A100_40GB, 1))
    found = problems(snapshot, entry({"1g.5gb": 1, "bogus": 1, "3g.71gb": 1}))
    assert len(found) == 4  # every problem of every GPU at once: 2 on the H200, 2 on the A100
    h200_unknown = next(p for p in found if "GPU 0" in p and "'1g.5gb'" in p)
    assert "NVIDIA H200" in h200_unknown and "unknown profile" in h200_unknown
    for choice in ("1g.18gb", "1g.18gb+me", "3g.71gb", "7g.141gb", "1c.2g.35gb"):
        assert choice in h200_unknown
    bogus = next(p for p in found if "'bogus'" in p)
    assert "GPU 0" in bogus and "valid here: 1g.18gb" in bogus
    a100 = next(p for p in found if "GPU 1" in p and "'3g.71gb'" in p)
    assert "NVIDIA A100-SXM4-40GB" in a100 and "3g.20gb" in a100


def test_memory_agnostic_names_resolve_per_gpu() -> None:
    snapshot = node(gpu(H200, 0), gpu(A100_40GB, 1), gpu(A30, 2))
    balanced = entry({"1g": 2, "2g": 1, "3g": 1}, filters=["0x233510DE", "0x20B010DE"])
    assert layouts(snapshot, balanced) == {
        0: "1g.18gb×2+2g.35gb+3g.71gb",
        1: "1g.5gb×2+2g.10gb+3g.20gb",
    }
    assert layouts(snapshot, entry({"1g+me": 1, "1c.3g": 2}, devices=[0, 1])) == {
        0: "1g.18gb+me+1c.3g.71gb×2",
        1: "1g.5gb+me+1c.3g.20gb×2",
    }
    a30 = snapshot.gpu(2)
    assert resolve_profile(a30, "4g").gi.name == "4g.24gb"  # the A30's whole GPU
    assert resolve_profile(a30, "2g+me").gi.name == "2g.12gb+me"
    (problem,) = problems(snapshot, entry({"3g": 1}, devices=[2]))
    assert "GPU 2" in problem and "unknown profile '3g'" in problem and "4g.24gb" in problem


def test_memory_agnostic_name_without_a_standard_profile_is_ambiguous() -> None:
    h200 = gpu(H200)
    only_rev2 = replace(h200, profiles=tuple(p for p in h200.profiles if p.name != "1g.18gb"))
    with pytest.raises(InvalidRequest, match="cannot be resolved unambiguously") as caught:
        resolve_profile(only_rev2, "1g")
    assert "1g.35gb" in str(caught.value)
    assert resolve_profile(h200, "1g").gi.name == "1g.18gb"  # never the double-memory 1g


def test_canonical_names_and_zero_counts() -> None:
    h200 = gpu(H200)
    snapshot = node(h200)
    (a,) = desired_layouts(snapshot, [entry({"1c.1g.18gb": 3, "1g.18gb": 4, "7g.141gb": 0})])
    (b,) = desired_layouts(snapshot, [entry({"1g.18gb": 7})])
    assert a == b and describe(h200, a) == "1g.18gb×7"
    assert a.source == (("1c.1g.18gb", 3), ("1g.18gb", 4), ("7g.141gb", 0))
    assert resolve_profile(h200, "1c.1g.18gb").whole_gi
    (empty,) = desired_layouts(snapshot, [entry({"3g.71gb": 0})])
    assert empty == DesiredGpu(0, True, ()) and describe(h200, empty) == "no instances"


def test_compute_instance_names_are_packed_into_few_gis() -> None:
    h200 = gpu(H200)
    two_g = profile_named(h200, "2g.35gb")
    three_g = profile_named(h200, "3g.71gb")
    ci = {c.name: c.id for p in h200.profiles for c in p.ci_profiles}
    full = {p.name: p.full_ci().id for p in h200.profiles}  # type: ignore[union-attr]

    def specs(mig_devices: Mapping[str, int]) -> tuple[GiSpec, ...]:
        (desired,) = desired_layouts(node(h200), [entry(mig_devices)])
        return desired.instances

    assert specs({"1c.2g.35gb": 2}) == (GiSpec(two_g.id, (ci["1c.2g.35gb"],) * 2),)
    assert specs({"1c.3g.71gb": 1, "2c.3g.71gb": 1}) == (
        GiSpec(three_g.id, (ci["1c.3g.71gb"], ci["2c.3g.71gb"])),
    )
    assert sorted(specs({"1c.2g.35gb": 3})) == [
        GiSpec(two_g.id, (ci["1c.2g.35gb"],)),
        GiSpec(two_g.id, (ci["1c.2g.35gb"],) * 2),
    ]
    assert sorted(specs({"2g.35gb": 1, "1c.2g.35gb": 2})) == [
        GiSpec(two_g.id, (ci["1c.2g.35gb"],) * 2),
        GiSpec(two_g.id, (full["2g.35gb"],)),
    ]
    assert specs({"1g.35gb": 1}) == (GiSpec(15, (7,)),)  # CI index 7, the 26-SM one
    assert describe(h200, DesiredGpu(0, True, specs({"1c.3g.71gb": 3, "2c.3g.71gb": 1}))) == (
        "1c.3g.71gb×3+2c.3g.71gb"
    )
    found = problems(node(h200), entry({"1c.2g.35gb": 7}))
    assert "2g.35gb" in found[0] and "at most 6" in found[0]
    found = problems(node(h200), entry({"3c.4g.71gb": 1}))
    assert "4g.71gb offers no 3-slice compute instance" in found[0]


@pytest.mark.parametrize(
    ("mig_devices", "valid"),
    [
        ({}, True),
        ({"bogus": 1}, False),
        ({"1g.5gb": 7}, True),
        ({"1g.5gb": 8}, False),
        ({"1g.5gb": 3, "2g.10gb": 2}, True),
        ({"2g.10gb": 2, "3g.20gb": 1}, True),
        ({"4g.20gb": 1, "3g.20gb": 1}, True),
        ({"4g.20gb": 1, "3g.20gb": 1, "1g.5gb": 1}, False),
        ({"4g.20gb": 1, "2g.10gb": 2}, False),
        ({"1g.10gb": 4, "1g.5gb": 1}, False),
        ({"1g.5gb+me": 1, "1g.5gb": 6}, True),
        ({"1g.5gb+me": 2}, False),
        ({"7g.40gb": 1, "1g.5gb": 1}, False),
    ],
)
def test_mig_parted_a100_40gb_capacity_cases(mig_devices: dict[str, int], valid: bool) -> None:
    a100 = gpu(A100_40GB, 3)
    if valid:
        (desired,) = desired_layouts(node(a100), [entry(mig_devices)])
        assert desired.mig_enabled
        assert len(plan_gpu(a100, desired).create_gis) == sum(mig_devices.values())
    else:
        (problem,) = problems(node(a100), entry(mig_devices))
        assert "GPU 3 (NVIDIA A100-SXM4-40GB)" in problem


def test_over_capacity_says_why() -> None:
    a100 = node(gpu(A100_40GB))
    (problem,) = problems(a100, entry({"4g.20gb": 1, "3g.20gb": 1, "1g.5gb": 1}))
    assert "1g.5gb+3g.20gb+4g.20gb cannot be placed" in problem
    assert "8 compute slices, the GPU has 7" in problem
    (problem,) = problems(a100, entry({"1g.5gb": 8}))
    assert "at most 7" in problem


def test_observed_layout_round_trips_through_selection() -> None:
    h200 = gpu(H200)
    wanted = {"1g.35gb": 1, "1c.2g.35gb": 2, "1c.3g.71gb": 1, "2c.3g.71gb": 1}
    (desired,) = desired_layouts(node(h200), [entry(wanted)])
    held = replace(h200, instances=())
    final = apply_plan(held, plan_gpu(held, desired))
    exported = dict(observed_layout(final))
    assert exported == wanted
    (again,) = desired_layouts(node(final), [entry(exported)])
    assert layout_matches(final, again)


def test_mig_parted_default_config_balanced_on_a_mixed_node() -> None:
    """mig-parted's own config-default.yaml, unchanged: each GPU finds its entry."""
    config = parse_config(anchor("config-default.yaml").read_bytes(), "config-default.yaml")
    snapshot = node(gpu(H200, 0), gpu(A100_40GB, 1), gpu(A30, 2), l40s(3))
    assert layouts(snapshot, *config.entries("all-balanced")) == {
        0: "1g.18gb×2+2g.35gb+3g.71gb",
        1: "1g.5gb×2+2g.10gb+3g.20gb",
        2: "1g.6gb×2+2g.12gb",
    }
    assert layouts(snapshot, *config.entries("all-disabled")) == dict.fromkeys(
        range(3), "MIG disabled"
    )


def test_problems_name_file_line_and_key_once_for_all_gpus_of_a_model() -> None:
    """Eight GPUs with the same mistake give one message naming them all, located in the file."""
    config = parse_config(
        b"version: v1\nmig-configs:\n  big:\n  - devices: all\n    mig-enabled: true\n"
        b"    mig-devices: {1g.18gb: 3, 2g.35gb: 1, 3g.71gb: 1}\n",
        "/etc/migd/config.yaml",
    )
    mixed = node(*(gpu(H200, i) for i in range(8)), gpu(A100_40GB, 8), gpu(H200, 9))
    found = problems(mixed, *config.entries("big"))
    assert found[0] == (
        "/etc/migd/config.yaml:4:5: mig-configs.big[0]: GPUs 0, 1, 2, 3, 4, 5, 6, 7, 9 "
        "(NVIDIA H200): 1g.18gb×3+2g.35gb+3g.71gb cannot be placed: the instances need 8 "
        "compute slices, the GPU has 7"
    )
    assert found[1].startswith(
        "/etc/migd/config.yaml:4:5: mig-configs.big[0]: GPU 8 (NVIDIA A100-SXM4-40GB): "
        "unknown profile '1g.18gb'"
    )
    assert len(found) == 4  # the A100 knows none of the three H200 profiles
