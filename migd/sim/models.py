"""The simulated GPUs, as data: one YAML file per GPU model under ``migd/sim/models/``.

Each file describes what NVML reports about one GPU model: the device basics, every
GPU-instance (GI) profile with its possible placements and the order the driver tries
them when no placement is given, the compute-instance (CI) profiles each GI offers,
and the return code of every profile index the GPU does not support. Figures come
from a real H200 readout and NVIDIA's tables (``sources:`` in each file); what no
source confirmed and was made up plausibly is named in the file's ``synthesized:``
list, so a correction from real hardware is one edit in one file.

No model is built here: this module only reads the files and checks them. A broken
file raises :class:`ModelDataError` naming the file and the field. It does not import
pynvml: the simulator sits under pynvml and needs these figures as plain values.

Synthesized-field paths (``synthesized:``) are dotted: a top-level field
(``pci_subsystem_id``), a GI row or field by GI profile id (``gi.15``,
``gi.15.default_order``), a CI table (``gi.15.compute_instances``) or a CI row or field
by CI profile id (``gi.15.ci.0``, ``gi.9.ci.0.placements``); ``*`` stands for every GI or CI
id (``gi.*.memory_size_mb``).
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping
from importlib import resources
from typing import Any, NoReturn

import yaml

# NVML return codes a profile query can fail with (nvml.h; pynvml is not imported here).
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3

# NVML_GPU_INSTANCE_PROFILE_COUNT / NVML_COMPUTE_INSTANCE_PROFILE_COUNT in nvml.h 13.
GI_PROFILE_INDEX_COUNT = 18
CI_PROFILE_INDEX_COUNT = 9

# Compute slices per NVML_GPU_INSTANCE_PROFILE_* index, as go-nvlib and nvml.h define them.
GI_INDEX_SLICES: Mapping[int, int] = types.MappingProxyType(
    {
        0: 1,  # 1_SLICE
        1: 2,  # 2_SLICE
        2: 3,  # 3_SLICE
        3: 4,  # 4_SLICE
        4: 7,  # 7_SLICE
        5: 8,  # 8_SLICE
        6: 6,  # 6_SLICE
        7: 1,  # 1_SLICE_REV1 (+me)
        8: 2,  # 2_SLICE_REV1 (+me)
        9: 1,  # 1_SLICE_REV2 (double memory, no suffix)
        10: 1,  # 1_SLICE_GFX
        11: 2,  # 2_SLICE_GFX
        12: 4,  # 4_SLICE_GFX
        13: 1,  # 1_SLICE_NO_ME
        14: 2,  # 2_SLICE_NO_ME
        15: 1,  # 1_SLICE_ALL_ME
        16: 2,  # 2_SLICE_ALL_ME
        17: 3,  # 3_SLICE_GFX
    }
)

# Name suffix per GI profile index (nvml.md "Profile names").
GI_INDEX_SUFFIX: Mapping[int, str] = types.MappingProxyType(
    {
        7: "+me",
        8: "+me",
        10: "+gfx",
        11: "+gfx",
        12: "+gfx",
        17: "+gfx",
        13: "-me",
        14: "-me",
        15: "+me.all",
        16: "+me.all",
    }
)

# Compute slices per NVML_COMPUTE_INSTANCE_PROFILE_* index (7 = 1_SLICE_REV1, 8 = 7_SLICE_NVL).
CI_INDEX_SLICES: Mapping[int, int] = types.MappingProxyType(
    {0: 1, 1: 2, 2: 3, 3: 4, 4: 7, 5: 8, 6: 6, 7: 1, 8: 7}
)

_ERROR_CODES: Mapping[str, int] = types.MappingProxyType(
    {"invalid_argument": NVML_ERROR_INVALID_ARGUMENT, "not_supported": NVML_ERROR_NOT_SUPPORTED}
)

_MIB = 1 << 20
_GIB = 1 << 30


class ModelDataError(ValueError):
    """A GPU model file is missing, malformed or inconsistent; the message says where."""


# ---------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CiModel:
    """One compute-instance profile a GI offers (``nvmlComputeInstanceProfileInfo_v2_t``)."""

    index: int  # NVML_COMPUTE_INSTANCE_PROFILE_* constant
    id: int  # info.id
    name: str  # as the driver reports it: "MIG 1c.3g.71gb", or the GI name for a full CI
    slice_count: int
    instance_count: int
    multiprocessor_count: int
    shared_copy_engine_count: int
    shared_decoder_count: int
    shared_encoder_count: int
    shared_jpeg_count: int
    shared_ofa_count: int
    placements: tuple[tuple[int, int], ...]  # (start, size) on the GI-local compute axis
    default: bool  # the '*' row: what a CI create without a profile choice ('-C') makes


@dataclasses.dataclass(frozen=True)
class GiModel:
    """One GPU-instance profile (``nvmlGpuInstanceProfileInfo_v2_t`` plus placements)."""

    index: int  # NVML_GPU_INSTANCE_PROFILE_* constant
    id: int  # info.id
    name: str  # "MIG 1g.18gb", "MIG 1g.18gb+me"
    slice_count: int
    instance_count: int
    multiprocessor_count: int
    copy_engine_count: int
    decoder_count: int
    encoder_count: int
    jpeg_count: int
    ofa_count: int
    memory_size_mb: int
    is_p2p_supported: int
    placements: tuple[tuple[int, int], ...]  # (start, size) on the memory-slice axis
    default_order: tuple[int, ...]  # starts the driver tries, in order, without a placement
    compute_instances: tuple[CiModel, ...]

    @property
    def short_name(self) -> str:
        """The name without the driver's "MIG " prefix (``1g.18gb+me``)."""
        return self.name.removeprefix("MIG ")

    def ci_by_index(self, index: int) -> CiModel | None:
        """The CI profile with this NVML_COMPUTE_INSTANCE_PROFILE_* index, if offered."""
        return next((ci for ci in self.compute_instances if ci.index == index), None)

    def ci_by_id(self, profile_id: int) -> CiModel | None:
        """The CI profile with this info.id, if offered."""
        return next((ci for ci in self.compute_instances if ci.id == profile_id), None)


@dataclasses.dataclass(frozen=True)
class GpuModel:
    """Everything NVML reports about one GPU model that the simulator needs."""

    key: str  # "H200-SXM-141GB"
    aliases: tuple[str, ...]  # ("H200",)
    name: str  # nvmlDeviceGetName: "NVIDIA H200"
    pci_device_id: int  # (device << 16) | vendor: 0x233510DE
    pci_subsystem_id: int
    memory_total_bytes: int
    architecture: int  # NVML_DEVICE_ARCH_*: AMPERE 7, ADA 8, HOPPER 9, BLACKWELL 10
    mig_capable: bool
    mode_change_needs_reset: bool  # Ampere: True; Hopper and later: False
    slot_count: int  # placement-axis units: 8, 4 (A30), 12 (RTX PRO 6000)
    compute_slices: int
    max_gpu_instances: int
    gi_profiles: tuple[GiModel, ...]
    profile_index_errors: tuple[tuple[int, int], ...]  # (GI profile index, NVML return code)
    synthesized: tuple[str, ...]  # dotted paths of figures no source confirmed

    def gi_by_index(self, index: int) -> GiModel | None:
        """The GI profile with this NVML_GPU_INSTANCE_PROFILE_* index, if supported."""
        return next((gi for gi in self.gi_profiles if gi.index == index), None)

    def gi_by_id(self, profile_id: int) -> GiModel | None:
        """The GI profile with this info.id, if supported."""
        return next((gi for gi in self.gi_profiles if gi.id == profile_id), None)

    def profile_index_error(self, index: int) -> int | None:
        """The NVML return code a GI profile query for ``index`` fails with, or None.

        Indices the file lists give their code; a GPU without MIG refuses every index
        with NOT_SUPPORTED; any other index lies past the driver's table and gets
        INVALID_ARGUMENT (as the H200 answers for 17 and 18).
        """
        if self.gi_by_index(index) is not None:
            return None
        for listed, code in self.profile_index_errors:
            if listed == index:
                return code
        if not self.mig_capable:
            return NVML_ERROR_NOT_SUPPORTED
        return NVML_ERROR_INVALID_ARGUMENT


# ---------------------------------------------------------------------------
# Naming
# ---------------------------------------------------------------------------


def mig_memory_gb(memory_size_mb: int, memory_total_bytes: int) -> int:
    """The GB figure NVIDIA tooling puts in a profile name (go-nvlib ``getMigMemorySizeGB``).

    ``round_half_up(ceil(8 * memorySizeMB * 2**20 / total) / 8 * ceil(total / 2**30))``,
    in exact integers: Python's ``round()`` rounds half to even and would name the
    H200's 3g profile ``3g.70gb`` instead of the ``3g.71gb`` it reports.
    """
    eighths = -(-8 * memory_size_mb * _MIB // memory_total_bytes)  # ceil
    total_gb = -(-memory_total_bytes // _GIB)  # ceil
    return (2 * eighths * total_gb + 8) // 16  # round half up of eighths * total_gb / 8


def gi_profile_name(index: int, memory_size_mb: int, memory_total_bytes: int) -> str:
    """The driver name of a GI profile: ``MIG <g>g.<GB>gb<suffix>``."""
    gb = mig_memory_gb(memory_size_mb, memory_total_bytes)
    return f"MIG {GI_INDEX_SLICES[index]}g.{gb}gb{GI_INDEX_SUFFIX.get(index, '')}"


def ci_profile_name(ci_slices: int, gi: GiModel) -> str:
    """The driver name of a CI profile: ``MIG <c>c.<GI short name>``, or the GI name if c == g."""
    if ci_slices == gi.slice_count:
        return gi.name
    return f"MIG {ci_slices}c.{gi.short_name}"


def ci_size_allowed(ci_slices: int, gi_slices: int) -> bool:
    """Whether a g-slice GI offers c-slice CIs: c <= g and (c == g or 2c <= g + 1)."""
    return ci_slices <= gi_slices and (ci_slices == gi_slices or 2 * ci_slices <= gi_slices + 1)


# ---------------------------------------------------------------------------
# Reading a file
# ---------------------------------------------------------------------------


class _Reader:
    """Typed access to one YAML mapping that reports errors with the file and key path."""

    def __init__(self, data: Any, source: str, path: str) -> None:
        self.source = source
        self.path = path
        if not isinstance(data, Mapping):
            self.fail(f"expected a mapping, got {type(data).__name__}")
        self.data: Mapping[str, Any] = data

    def fail(self, message: str, key: str | None = None) -> NoReturn:
        where = self.path if key is None else (f"{self.path}.{key}" if self.path else key)
        raise ModelDataError(f"{self.source}: {where or '<document>'}: {message}")

    def check_keys(self, required: set[str], optional: frozenset[str] = frozenset()) -> None:
        present = set(self.data)
        missing = sorted(required - present)
        if missing:
            self.fail(f"missing key(s): {', '.join(missing)}")
        unknown = sorted(str(k) for k in present - required - optional)
        if unknown:
            self.fail(f"unknown key(s): {', '.join(unknown)}")

    def integer(self, key: str, minimum: int = 0) -> int:
        value = self.data.get(key)
        # bool is an int subclass: 'true' must not pass for a count.
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(f"expected an integer, got {value!r}", key)
        if value < minimum:
            self.fail(f"must be >= {minimum}, got {value}", key)
        return value

    def boolean(self, key: str) -> bool:
        value = self.data.get(key)
        if not isinstance(value, bool):
            self.fail(f"expected true or false, got {value!r}", key)
        return value

    def string(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str) or not value.strip():
            self.fail(f"expected a non-empty string, got {value!r}", key)
        return value

    def int_list(self, key: str, minimum: int = 0) -> tuple[int, ...]:
        value = self.data.get(key)
        if not isinstance(value, list):
            self.fail(f"expected a list of integers, got {value!r}", key)
        for item in value:
            if not isinstance(item, int) or isinstance(item, bool) or item < minimum:
                self.fail(f"expected integers >= {minimum}, got {item!r}", key)
        if len(set(value)) != len(value):
            self.fail(f"duplicate entries in {value}", key)
        return tuple(value)

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(f"expected a list of non-empty strings, got {value!r}", key)
        if len(set(value)) != len(value):
            self.fail("duplicate entries", key)
        return tuple(value)

    def child(self, key: str) -> _Reader:
        return _Reader(self.data.get(key), self.source, f"{self.path}.{key}" if self.path else key)

    def rows(self, key: str) -> list[_Reader]:
        value = self.data.get(key)
        if not isinstance(value, list):
            self.fail(f"expected a list, got {type(value).__name__}", key)
        prefix = f"{self.path}.{key}" if self.path else key
        return [_Reader(item, self.source, f"{prefix}[{i}]") for i, item in enumerate(value)]

    def placements(self, key: str, axis: int) -> tuple[tuple[int, int], ...]:
        """``{starts: [...], size: n}`` (the ``-lgipp`` form) -> ((start, size), ...)."""
        node = self.child(key)
        node.check_keys({"starts", "size"})
        size = node.integer("size", minimum=1)
        starts = node.int_list("starts")
        if not starts:
            node.fail("no placements", "starts")
        if list(starts) != sorted(starts):
            node.fail(f"starts must ascend, got {list(starts)}", "starts")
        for start in starts:
            if start + size > axis:
                node.fail(f"placement {start}:{size} does not fit an axis of {axis} units")
        return tuple((start, size) for start in starts)


_TOP_KEYS = {f.name for f in dataclasses.fields(GpuModel)} | {"sources"}
_GI_KEYS = {f.name for f in dataclasses.fields(GiModel)}
_CI_KEYS = {f.name for f in dataclasses.fields(CiModel)}
_INFO_COUNTS = (
    "multiprocessor_count",
    "copy_engine_count",
    "decoder_count",
    "encoder_count",
    "jpeg_count",
    "ofa_count",
)


def _parse_ci(row: _Reader, gi: GiModel) -> CiModel:
    row.check_keys(_CI_KEYS)
    index = row.integer("index")
    if index >= CI_PROFILE_INDEX_COUNT:
        row.fail(f"not an NVML_COMPUTE_INSTANCE_PROFILE_* index: {index}", "index")
    slices = row.integer("slice_count", minimum=1)
    if slices != CI_INDEX_SLICES[index]:
        row.fail(f"CI profile index {index} has {CI_INDEX_SLICES[index]} slice(s), not {slices}")
    if not ci_size_allowed(slices, gi.slice_count):
        row.fail(f"a {gi.slice_count}g GI offers no {slices}c CI (c <= g, c == g or 2c <= g+1)")
    # A CI lives inside its GI: its local axis is at most the GI's placement width
    # (Hopper CTS slots equal that width; Ampere uses slice_count <= it).
    ci_placements = row.placements("placements", axis=gi.placements[0][1])
    size = ci_placements[0][1]
    if size < slices:
        row.fail(f"placement size {size} is smaller than the CI's {slices} slice(s)", "placements")
    instances = row.integer("instance_count", minimum=1)
    if instances > len(ci_placements):
        row.fail(f"{instances} instances but {len(ci_placements)} placements", "instance_count")
    sms = row.integer("multiprocessor_count", minimum=1)
    if sms > gi.multiprocessor_count:
        row.fail(f"{sms} SMs exceed the GI's {gi.multiprocessor_count}", "multiprocessor_count")
    shared = {}
    for name in ("copy_engine_count", "decoder_count", "encoder_count", "jpeg_count", "ofa_count"):
        value = row.integer(f"shared_{name}")
        # Every CI reports its GI's engines as shared (ci-profiles.yaml rules.shared_engines).
        if value != getattr(gi, name):
            row.fail(f"must equal the GI's {name} ({getattr(gi, name)})", f"shared_{name}")
        shared[f"shared_{name}"] = value
    name = row.string("name")
    expected = ci_profile_name(slices, gi)
    if name != expected:
        row.fail(f"driver name for a {slices}c CI in {gi.name!r} is {expected!r}, not {name!r}")
    return CiModel(
        index=index,
        id=row.integer("id"),
        name=name,
        slice_count=slices,
        instance_count=instances,
        multiprocessor_count=sms,
        placements=ci_placements,
        default=row.boolean("default"),
        **shared,
    )


def _parse_gi(row: _Reader, slot_count: int, compute_slices: int, total_bytes: int) -> GiModel:
    row.check_keys(_GI_KEYS)
    index = row.integer("index")
    if index >= GI_PROFILE_INDEX_COUNT:
        row.fail(f"not an NVML_GPU_INSTANCE_PROFILE_* index: {index}", "index")
    slices = row.integer("slice_count", minimum=1)
    if slices != GI_INDEX_SLICES[index]:
        row.fail(f"GI profile index {index} has {GI_INDEX_SLICES[index]} slice(s), not {slices}")
    if slices > compute_slices:
        row.fail(f"{slices} slices exceed the GPU's {compute_slices}", "slice_count")
    gi_placements = row.placements("placements", axis=slot_count)
    instances = row.integer("instance_count", minimum=1)
    if instances > len(gi_placements):
        row.fail(f"{instances} instances but {len(gi_placements)} placements", "instance_count")
    default_order = row.int_list("default_order")
    starts = sorted(start for start, _ in gi_placements)
    # The driver tries every possible placement before it gives up, so the order is a
    # permutation of the starts: a forgotten or stray start is a data error.
    if sorted(default_order) != starts:
        row.fail(f"must be an ordering of the placement starts {starts}", "default_order")
    memory = row.integer("memory_size_mb", minimum=1)
    if memory * _MIB > total_bytes:
        row.fail(f"{memory} MiB exceed the GPU's memory", "memory_size_mb")
    name = row.string("name")
    expected = gi_profile_name(index, memory, total_bytes)
    if name != expected:
        row.fail(
            f"memory_size_mb {memory} on a {total_bytes}-byte GPU names the profile "
            f"{expected!r} (go-nvlib formula), not {name!r}"
        )
    p2p = row.integer("is_p2p_supported")
    if p2p > 1:
        row.fail("must be 0 or 1", "is_p2p_supported")
    gi = GiModel(
        index=index,
        id=row.integer("id"),
        name=name,
        slice_count=slices,
        instance_count=instances,
        memory_size_mb=memory,
        is_p2p_supported=p2p,
        placements=gi_placements,
        default_order=default_order,
        compute_instances=(),
        **{
            count: row.integer(count, minimum=int(count == "multiprocessor_count"))
            for count in _INFO_COUNTS
        },
    )
    cis = tuple(_parse_ci(ci_row, gi) for ci_row in row.rows("compute_instances"))
    _check_unique(row, "compute_instances", [ci.index for ci in cis], "CI profile index")
    _check_unique(row, "compute_instances", [ci.id for ci in cis], "CI profile id")
    defaults = [ci for ci in cis if ci.default]
    if len(defaults) != 1:
        row.fail(f"exactly one CI must be the default, found {len(defaults)}", "compute_instances")
    full = defaults[0]
    # The '*' row is the CI spanning the whole GI; it reports the GI's SM count.
    if full.slice_count != slices or full.multiprocessor_count != gi.multiprocessor_count:
        row.fail(
            f"the default CI must span the GI ({slices} slices, "
            f"{gi.multiprocessor_count} SMs), got {full.name!r}",
            "compute_instances",
        )
    return dataclasses.replace(gi, compute_instances=cis)


def _check_unique(node: _Reader, key: str, values: list[Any], what: str) -> None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            node.fail(f"duplicate {what} {value!r}", key)
        seen.add(value)


def _check_synthesized(top: _Reader, paths: tuple[str, ...], gis: tuple[GiModel, ...]) -> None:
    """Every synthesized path must name something that exists, so the list stays honest.

    ``*`` stands for every GI (or CI) id and must match at least one.
    """
    for path in paths:
        if not _path_matches(path.split("."), gis):
            top.fail(f"{path!r} names no field of this model", "synthesized")


def _path_matches(parts: list[str], gis: tuple[GiModel, ...]) -> bool:
    if len(parts) == 1:
        return parts[0] in _TOP_KEYS - {"sources", "synthesized", "gi_profiles"}
    if parts[0] != "gi":
        return False
    selected = [gi for gi in gis if parts[1] in ("*", str(gi.id))]
    rest = parts[2:]
    if not selected:
        return False
    if not rest:
        return True
    if len(rest) == 1:
        return rest[0] in _GI_KEYS
    if rest[0] != "ci" or len(rest) > 3:
        return False
    cis = [ci for gi in selected for ci in gi.compute_instances if rest[1] in ("*", str(ci.id))]
    return bool(cis) and (len(rest) == 2 or rest[2] in _CI_KEYS)


def parse_model(data: Any, source: str) -> GpuModel:
    """Check one model document (the parsed YAML) and build its :class:`GpuModel`.

    ``source`` names the file in error messages. Raises :class:`ModelDataError`.
    """
    top = _Reader(data, source, "")
    top.check_keys(_TOP_KEYS)
    sources = data.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        top.fail("expected a non-empty list of source notes", "sources")
    mig_capable = top.boolean("mig_capable")
    slot_count = top.integer("slot_count")
    total_bytes = top.integer("memory_total_bytes", minimum=1)
    compute_slices = top.integer("compute_slices")
    gis = tuple(
        _parse_gi(row, slot_count, compute_slices, total_bytes) for row in top.rows("gi_profiles")
    )
    _check_unique(top, "gi_profiles", [gi.index for gi in gis], "GI profile index")
    _check_unique(top, "gi_profiles", [gi.id for gi in gis], "GI profile id")
    _check_unique(top, "gi_profiles", [gi.name for gi in gis], "GI profile name")

    errors_node = top.child("profile_index_errors")
    errors_node.check_keys(set(), frozenset(_ERROR_CODES))
    index_errors = sorted(
        (index, _ERROR_CODES[code_name])
        for code_name in errors_node.data
        for index in errors_node.int_list(code_name)
    )
    _check_unique(top, "profile_index_errors", [i for i, _ in index_errors], "profile index")
    supported = {gi.index for gi in gis}
    for index, _ in index_errors:
        if index in supported:
            top.fail(f"index {index} is a supported profile", "profile_index_errors")
    if mig_capable:
        if not gis:
            top.fail("a MIG-capable GPU needs GI profiles", "gi_profiles")
        # Every NVML index must have an answer: a profile or an error code.
        covered = supported | {i for i, _ in index_errors}
        missing = sorted(set(range(GI_PROFILE_INDEX_COUNT)) - covered)
        if missing:
            top.fail(f"no profile and no error for index(es) {missing}", "profile_index_errors")
        max_gis = top.integer("max_gpu_instances", minimum=1)
        for gi in gis:
            if gi.instance_count > max_gis:
                top.fail(f"{gi.name!r} allows more instances than max_gpu_instances")
    else:
        if gis:
            top.fail("a GPU without MIG has no GI profiles", "gi_profiles")
        if any(code != NVML_ERROR_NOT_SUPPORTED for _, code in index_errors):
            top.fail("a GPU without MIG answers NOT_SUPPORTED only", "profile_index_errors")

    synthesized = top.str_list("synthesized")
    _check_synthesized(top, synthesized, gis)

    key = top.string("key")
    model = GpuModel(
        key=key,
        aliases=top.str_list("aliases"),
        name=top.string("name"),
        pci_device_id=top.integer("pci_device_id"),
        pci_subsystem_id=top.integer("pci_subsystem_id"),
        memory_total_bytes=total_bytes,
        architecture=top.integer("architecture"),
        mig_capable=mig_capable,
        mode_change_needs_reset=top.boolean("mode_change_needs_reset"),
        slot_count=slot_count,
        compute_slices=compute_slices,
        max_gpu_instances=top.integer("max_gpu_instances"),
        gi_profiles=gis,
        profile_index_errors=tuple(index_errors),
        synthesized=synthesized,
    )
    if model.pci_device_id & 0xFFFF != 0x10DE:
        top.fail(f"vendor half must be 0x10DE: 0x{model.pci_device_id:08X}", "pci_device_id")
    return model


# ---------------------------------------------------------------------------
# The packaged models
# ---------------------------------------------------------------------------

_PACKAGE = "migd.sim"
_MODELS_DIR = "models"


def _models_dir() -> Any:
    return resources.files(_PACKAGE).joinpath(_MODELS_DIR)


@functools.lru_cache(maxsize=1)
def _model_keys() -> tuple[str, ...]:
    """The keys of the packaged models: one ``<KEY>.yaml`` per model."""
    keys = sorted(
        entry.name.removesuffix(".yaml")
        for entry in _models_dir().iterdir()
        if entry.name.endswith(".yaml")
    )
    if not keys:
        raise ModelDataError(f"no GPU model files in {_PACKAGE}/{_MODELS_DIR}")
    return tuple(keys)


# The C loader is the same safe schema as yaml.safe_load (plain data, no object
# construction), only faster; the pure-Python one is the fallback where libyaml is absent.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _load_key(key: str) -> GpuModel:
    source = f"{_MODELS_DIR}/{key}.yaml"
    try:
        text = _models_dir().joinpath(f"{key}.yaml").read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_SAFE_LOADER)
    except (OSError, yaml.YAMLError) as exc:
        raise ModelDataError(f"{source}: cannot read: {exc}") from exc
    model = parse_model(data, source)
    if model.key != key:
        raise ModelDataError(f"{source}: key {model.key!r} does not match the file name")
    return model


@functools.lru_cache(maxsize=1)
def _name_index() -> Mapping[str, str]:
    """Accepted name (casefolded) -> model key, over every packaged model."""
    index: dict[str, str] = {}
    for key in _model_keys():
        for name in (key, *_load_key(key).aliases):
            folded = name.casefold()
            if folded in index and index[folded] != key:
                raise ModelDataError(f"GPU name {name!r} is used by {index[folded]} and {key}")
            index[folded] = key
    return types.MappingProxyType(index)


def model_names() -> tuple[str, ...]:
    """Every accepted GPU model name: each model's key, then its aliases, models by key."""
    _name_index()  # loads and checks every model, including name clashes
    return tuple(name for key in _model_keys() for name in (key, *_load_key(key).aliases))


def load_model(name: str) -> GpuModel:
    """The GPU model called ``name`` (a key or an alias, any case).

    Raises ValueError listing the valid names for an unknown one, and
    :class:`ModelDataError` (a ValueError) for a broken model file.
    """
    folded = name.casefold()
    # A key is a file name: load that file alone, without reading every model.
    for key in _model_keys():
        if key.casefold() == folded:
            return _load_key(key)
    key = _name_index().get(folded)
    if key is None:
        raise ValueError(f"unknown GPU model {name!r}; valid names: {', '.join(model_names())}")
    return _load_key(key)
