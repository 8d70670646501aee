"""The GPU model tables (``validate --gpu-model`` and the simulator read them): the H200
against a real readout, every model's consistency, name lookup, and the loader's refusal
of broken data."""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import math
import re
from importlib import resources
from pathlib import Path

import pytest
import yaml
from paths import H200_FIXTURE

from migd.core import gpu_models as models
from migd.core.gpu_models import GpuModel
from migd.core.nvml_codes import INVALID_ARGUMENT, NOT_SUPPORTED
from migd.formats import gpu_models as model_files
from migd.formats.gpu_models import ModelDataError, load_model, model_names, parse_model

KEYS = (
    "A100-SXM4-40GB",
    "A100-SXM4-80GB",
    "A30-24GB",
    "H100-SXM5-80GB",
    "H100-NVL-94GB",
    "H200-SXM-141GB",
    "GH200-96GB",
    "GH200-144GB",
    "B200-180GB",
    "RTX-PRO-6000-Blackwell-96GB",
    "L40S-48GB",
)

# ---------------------------------------------------------------------------
# The real H200
# ---------------------------------------------------------------------------

# tests/data/h200-nvml-readout.json: a real H200 (driver 580.159.04) as NVML answered it,
# read with nvmlDeviceGetGpuInstanceProfileInfo(version=2) and ...PossiblePlacements; per
# profile constant, the info fields and placements, or the NVML error.
H200_READOUT = json.loads(H200_FIXTURE.read_text())
READOUT_PROFILES = sorted(
    H200_READOUT["gpu_instance_profiles"].values(), key=lambda entry: entry["constant_value"]
)

# nvmlGpuInstanceProfileInfo_v2_t field -> GiModel field.
INFO_FIELDS = {
    "id": "id",
    "isP2pSupported": "is_p2p_supported",
    "sliceCount": "slice_count",
    "instanceCount": "instance_count",
    "multiprocessorCount": "multiprocessor_count",
    "copyEngineCount": "copy_engine_count",
    "decoderCount": "decoder_count",
    "encoderCount": "encoder_count",
    "jpegCount": "jpeg_count",
    "ofaCount": "ofa_count",
    "memorySizeMB": "memory_size_mb",
    "name": "name",
}


def model_info(gi: models.GiModel) -> dict:
    return {nvml: getattr(gi, field) for nvml, field in INFO_FIELDS.items()}


def test_h200_device_matches_readout() -> None:
    h200 = load_model("H200")
    device = H200_READOUT["device"]
    assert h200.key == "H200-SXM-141GB"
    assert h200.name == device["name"] == "NVIDIA H200"
    assert h200.pci_device_id == device["pci_device_id_int"] == 0x233510DE
    assert h200.pci_subsystem_id == 0x18BF10DE
    assert h200.memory_total_bytes == device["memory_total_bytes"]
    assert h200.architecture == device["architecture"]
    assert h200.mig_capable
    assert not h200.mode_change_needs_reset
    assert (h200.slot_count, h200.compute_slices, h200.max_gpu_instances) == (8, 7, 7)


@pytest.mark.parametrize(
    "entry", READOUT_PROFILES, ids=[f"index-{e['constant_value']}" for e in READOUT_PROFILES]
)
def test_h200_profile_index_matches_readout(entry: dict) -> None:
    h200 = load_model("H200")
    index = entry["constant_value"]
    gi = h200.gi_by_index(index)
    if "error" in entry:
        code = entry["error"]["code"]
        assert gi is None
        assert h200.profile_index_error(index) == code
        assert (index, code) in h200.profile_index_errors
        return
    assert gi is not None
    assert model_info(gi) == {k: v for k, v in entry["info"].items() if k != "version"}
    assert list(gi.placements) == [(p["start"], p["size"]) for p in entry["possible_placements"]]
    # An empty GPU has room for every instance the profile allows.
    assert entry["remaining_capacity"] == gi.instance_count
    assert h200.profile_index_error(index) is None
    assert h200.gi_by_id(entry["info"]["id"]) is gi


def test_h200_answers_past_the_table_with_invalid_argument() -> None:
    h200 = load_model("H200")
    for index in (17, 18, 19, 64):
        assert h200.profile_index_error(index) == INVALID_ARGUMENT
    assert {i for i, _ in h200.profile_index_errors} | {gi.index for gi in h200.gi_profiles} >= set(
        range(18)
    )


def test_h200_compute_instances_follow_the_reference_tables() -> None:
    gi = load_model("H200").gi_by_id(9)  # 3g.71gb
    assert [(ci.index, ci.id, ci.name, ci.multiprocessor_count) for ci in gi.compute_instances] == [
        (0, 0, "MIG 1c.3g.71gb", 16),
        (1, 1, "MIG 2c.3g.71gb", 32),
        (2, 2, "MIG 3g.71gb", 60),
    ]
    assert gi.ci_by_index(2).placements == ((0, 4),)  # Hopper CTS width of 3c
    assert gi.ci_by_index(2).default
    double = load_model("H200").gi_by_id(15)  # 1g.35gb: its '*' CI is 1_SLICE_REV1
    assert double.ci_by_id(7).default and double.ci_by_id(7).placements == ((0, 2),)
    assert double.ci_by_id(7).multiprocessor_count == 26


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def test_every_model_file_is_present() -> None:
    for key in KEYS:
        assert resources.files("migd.formats").joinpath(f"gpu-models/{key}.yaml").is_file(), key
        assert load_model(key).key == key


def test_model_names_cover_keys_and_aliases() -> None:
    names = model_names()
    aliases = ("H200", "H100-NVL", "A30", "B200", "L40S")
    extras = ("A100-40GB", "A100-80GB", "H100", "GH200", "RTX-PRO-6000")
    for name in (*KEYS, *aliases, *extras):
        assert name in names
    assert len({n.casefold() for n in names}) == len(names)


@pytest.mark.parametrize("name", model_names())
def test_every_name_loads(name: str) -> None:
    model = load_model(name)
    assert name == model.key or name in model.aliases
    assert load_model(name.lower()) is model
    assert load_model(name.upper()) is model


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        load_model("V100")
    message = str(info.value)
    assert "V100" in message
    for name in model_names():
        assert name in message


# ---------------------------------------------------------------------------
# Consistency of every model
# ---------------------------------------------------------------------------


def go_nvlib_gb(memory_size_mb: int, total_bytes: int) -> int:
    """go-nvlib getMigMemorySizeGB, written as the Go code does it (floats, math.Round)."""
    fraction = math.ceil(memory_size_mb * 1024 * 1024 / total_bytes * 8) / 8
    total_gb = (total_bytes + 2**30 - 1) // 2**30
    value = fraction * total_gb
    return math.floor(value + 0.5)  # Go's math.Round: half away from zero (value > 0)


SUFFIX = {
    7: "+me",
    8: "+me",
    10: "+gfx",
    11: "+gfx",
    12: "+gfx",
    13: "-me",
    14: "-me",
    15: "+me.all",
    16: "+me.all",
}


@pytest.fixture(params=KEYS)
def model(request: pytest.FixtureRequest) -> GpuModel:
    return load_model(request.param)


def test_placements_fit_the_axis(model: GpuModel) -> None:
    for gi in model.gi_profiles:
        assert gi.placements, gi.name
        for start, size in gi.placements:
            assert start >= 0 and start + size <= model.slot_count, (gi.name, start, size)
        assert sorted(gi.default_order) == sorted(start for start, _ in gi.placements)
        assert gi.instance_count <= len(gi.placements)
        assert gi.slice_count <= model.compute_slices


def test_ids_and_indices_are_unique(model: GpuModel) -> None:
    ids = [gi.id for gi in model.gi_profiles]
    indices = [gi.index for gi in model.gi_profiles]
    assert len(set(ids)) == len(ids)
    assert len(set(indices)) == len(indices)
    assert not set(indices) & {i for i, _ in model.profile_index_errors}
    for gi in model.gi_profiles:
        ci_ids = [ci.id for ci in gi.compute_instances]
        assert len(set(ci_ids)) == len(ci_ids), gi.name
        assert sum(ci.default for ci in gi.compute_instances) == 1, gi.name


def test_names_agree_with_the_go_nvlib_formula(model: GpuModel) -> None:
    for gi in model.gi_profiles:
        gb = go_nvlib_gb(gi.memory_size_mb, model.memory_total_bytes)
        assert gi.name == f"MIG {gi.slice_count}g.{gb}gb{SUFFIX.get(gi.index, '')}"
        for ci in gi.compute_instances:
            short = gi.name.removeprefix("MIG ")
            expected = (
                gi.name if ci.slice_count == gi.slice_count else f"MIG {ci.slice_count}c.{short}"
            )
            assert ci.name == expected


def test_compute_instances_obey_the_size_rule(model: GpuModel) -> None:
    for gi in model.gi_profiles:
        g = gi.slice_count
        width = gi.placements[0][1]
        for ci in gi.compute_instances:
            c = ci.slice_count
            assert c <= g and (c == g or 2 * c <= g + 1), (gi.name, ci.name)
            assert ci.multiprocessor_count <= gi.multiprocessor_count
            for start, size in ci.placements:
                assert size >= c and start >= 0 and start + size <= width, (gi.name, ci.name)
            assert 1 <= ci.instance_count <= len(ci.placements)
            shared = (
                ci.shared_copy_engine_count,
                ci.shared_decoder_count,
                ci.shared_encoder_count,
                ci.shared_jpeg_count,
                ci.shared_ofa_count,
            )
            engines = (
                gi.copy_engine_count,
                gi.decoder_count,
                gi.encoder_count,
                gi.jpeg_count,
                gi.ofa_count,
            )
            assert shared == engines
        offered = {ci.slice_count for ci in gi.compute_instances}
        assert offered == {c for c in (1, 2, 3, 4, 7) if c <= g and (c == g or 2 * c <= g + 1)}


EIGHT_SLOT_IDS = {0: 19, 7: 20, 9: 15, 1: 14, 2: 9, 3: 5, 4: 0}
A30_IDS = {0: 14, 7: 21, 1: 5, 8: 6, 3: 0}


def test_index_to_id_mapping(model: GpuModel) -> None:
    mapping = {gi.index: gi.id for gi in model.gi_profiles}
    if model.slot_count == 8:
        assert mapping == EIGHT_SLOT_IDS
    elif model.key == "A30-24GB":
        assert mapping == A30_IDS


def test_every_profile_index_has_an_answer(model: GpuModel) -> None:
    for index in range(20):
        gi = model.gi_by_index(index)
        code = model.profile_index_error(index)
        assert (gi is None) != (code is None)
        if code is not None:
            assert code in (INVALID_ARGUMENT, NOT_SUPPORTED)


def test_synthesized_fields_are_named(model: GpuModel) -> None:
    # H200 alone is read from hardware; every other model made something up.
    assert isinstance(model.synthesized, tuple)
    if model.key != "H200-SXM-141GB" and model.mig_capable:
        assert model.synthesized


def test_mode_change_reset_follows_the_architecture(model: GpuModel) -> None:
    if model.mig_capable:
        assert model.mode_change_needs_reset == (model.architecture == 7)


def test_l40s_has_no_mig() -> None:
    l40s = load_model("L40S")
    assert not l40s.mig_capable
    assert l40s.gi_profiles == ()
    assert l40s.name == "NVIDIA L40S"
    assert l40s.pci_device_id == 0x26B910DE
    assert l40s.architecture == 8
    assert l40s.memory_total_bytes // 2**20 == 46068
    assert all(l40s.profile_index_error(i) == NOT_SUPPORTED for i in range(32))


# ---------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------


def test_rounding_is_half_up() -> None:
    # 70.5 GB: Python's round() would say 70; the driver says 3g.71gb.
    assert models.mig_memory_gb(71424, 150754820096) == 71
    assert go_nvlib_gb(71424, 150754820096) == 71


def test_models_are_frozen() -> None:
    h200 = load_model("H200")
    with pytest.raises(dataclasses.FrozenInstanceError):
        h200.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        h200.gi_profiles[0].id = 1  # type: ignore[misc]


@pytest.mark.parametrize("module", [models, model_files])
def test_models_modules_do_not_import_pynvml(module: object) -> None:
    tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[attr-defined]
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "pynvml" not in imported


def h200_bytes() -> bytes:
    return resources.files("migd.formats").joinpath("gpu-models/H200-SXM-141GB.yaml").read_bytes()


def h200_document() -> dict:
    return yaml.safe_load(h200_bytes())


def gi_row(doc: dict, profile_id: int) -> dict:
    return next(row for row in doc["gi_profiles"] if row["id"] == profile_id)


def test_the_packaged_document_parses_to_the_loaded_model() -> None:
    assert parse_model(h200_bytes(), "H200") == load_model("H200")


BREAKAGES = {
    "placement past the axis": (
        lambda d: gi_row(d, 14)["placements"].update(starts=[0, 2, 4, 7]),
        "does not fit",
    ),
    "duplicate GI id": (lambda d: gi_row(d, 14).update(id=19), "duplicate GI profile id"),
    "default order off the starts": (
        lambda d: gi_row(d, 9).update(default_order=[4, 2]),
        "default_order",
    ),
    "name against formula": (
        lambda d: gi_row(d, 9).update(memory_size_mb=50000),
        "go-nvlib formula",
    ),
    "CI too big for its GI": (
        lambda d: gi_row(d, 14)["compute_instances"][0].update(index=2, id=2, slice_count=3),
        "offers no 3c CI",
    ),
    "CI placement outside its GI": (
        lambda d: gi_row(d, 14)["compute_instances"][0]["placements"].update(starts=[0, 2]),
        "does not fit",
    ),
    "CI shared engines differ": (
        lambda d: gi_row(d, 14)["compute_instances"][0].update(shared_ofa_count=1),
        "shared_ofa_count",
    ),
    "two default CIs": (
        lambda d: gi_row(d, 14)["compute_instances"][0].update(default=True),
        "exactly one CI",
    ),
    "unknown key": (lambda d: d.update(colour="green"), "unknown key"),
    "missing key": (lambda d: d.pop("slot_count"), "missing key"),
    "index without an answer": (
        lambda d: d["profile_index_errors"]["not_supported"].remove(5),
        "no profile and no error",
    ),
    "bogus synthesized path": (lambda d: d["synthesized"].append("gi.99.name"), "names no field"),
    "a count that is a bool": (
        lambda d: gi_row(d, 0).update(instance_count=True),
        "expected an integer",
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_broken_data_is_refused_with_a_clear_error(case: str) -> None:
    doc = copy.deepcopy(h200_document())
    breakage, message = BREAKAGES[case]
    breakage(doc)
    with pytest.raises(ModelDataError, match=message) as info:
        parse_model(yaml.safe_dump(doc).encode(), "H200-SXM-141GB.yaml")
    # Located: the file, the line and column, and the key path of the broken field.
    assert re.match(r"H200-SXM-141GB\.yaml:[0-9]+:[0-9]+: ", str(info.value)), info.value
