"""The GPU model tables migd ships: one YAML file per model under ``gpu-models/``.

Each file describes what NVML reports about one GPU model (the values are
``migd.core.gpu_models``): the device basics, every GPU-instance (GI) profile with its
possible placements and the order the driver tries them when no placement is given,
the compute-instance (CI) profiles each GI offers, and the return code of every
profile index the GPU does not support. Figures come from a real H200 readout and
NVIDIA's tables (``sources:`` in each file); what no source confirmed and was made up
plausibly is named in the file's ``synthesized:`` list, so a correction from real
hardware is one edit in one file.

The files are read through the located-YAML reader and checked against NVML's rules
(``migd.core.profiles``): a broken file raises :class:`ModelDataError` naming the file,
the line and the field. Nothing here imports pynvml: the simulator sits under pynvml
and needs these figures as plain values.

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
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, NoReturn

from yaml.nodes import Node as YamlNode

from migd.core import nvml_codes
from migd.core.gpu_models import (
    CiModel,
    GiModel,
    GpuModel,
    ci_profile_name,
    gi_profile_name,
)
from migd.core.profiles import (
    CI_INDEX_SLICES,
    CI_PROFILE_INDEX_COUNT,
    GI_INDEX_SLICES,
    GI_PROFILE_INDEX_COUNT,
    ci_fits,
)
from migd.errors import ConfigError
from migd.formats.yaml_reader import (
    InvalidValue,
    YamlReader,
    item_key,
    join_key,
    read_yaml_document,
)

_ERROR_CODES: Mapping[str, int] = types.MappingProxyType(
    {"invalid_argument": nvml_codes.INVALID_ARGUMENT, "not_supported": nvml_codes.NOT_SUPPORTED}
)

_MIB = 1 << 20


class ModelDataError(ValueError):
    """A GPU model file is missing, malformed or inconsistent; the message says where."""


# ---------------------------------------------------------------------------
# Reading one file
# ---------------------------------------------------------------------------


class _Table:
    """One mapping of a model file: its keys checked, its values read by key.

    Model files are migd's own data, so the first problem ends the read (every later
    check builds on what came before); the reader still locates it.
    """

    def __init__(
        self,
        r: YamlReader,
        node: YamlNode,
        path: str,
        keys: Collection[str],
        optional: Collection[str] = (),
    ) -> None:
        self.r = r
        self.node = node
        self.path = path
        before = len(r.problems)
        allowed = tuple(sorted({*keys, *optional}))
        self.found = r.fields(node, path, "this table", allowed)
        if len(r.problems) > before:
            raise InvalidValue
        missing = sorted(set(keys) - set(self.found))
        if missing:
            self.fail(f"missing key(s): {', '.join(missing)}")

    def fail(self, message: str, key: str | None = None) -> NoReturn:
        if key is None or key not in self.found:
            self.r.fail(self.node, self.path, message)
        self.r.fail(self.found[key][1], join_key(self.path, key), message)

    def _value(self, key: str) -> tuple[YamlNode, object]:
        node = self.found[key][1]
        return node, self.r.scalar(node, join_key(self.path, key))

    def _describe(self, key: str) -> str:
        return self.r.describe(self.found[key][1])

    def integer(self, key: str, minimum: int = 0) -> int:
        _, value = self._value(key)
        # bool is an int subclass: 'true' must not pass for a count.
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(f"expected an integer, got {self._describe(key)}", key)
        if value < minimum:
            self.fail(f"must be >= {minimum}, got {value}", key)
        return value

    def boolean(self, key: str) -> bool:
        _, value = self._value(key)
        if not isinstance(value, bool):
            self.fail(f"expected true or false, got {self._describe(key)}", key)
        return value

    def string(self, key: str) -> str:
        _, value = self._value(key)
        if not isinstance(value, str) or not value.strip():
            self.fail(f"expected a non-empty string, got {self._describe(key)}", key)
        return value

    def _items(self, key: str, expected: str) -> list[object]:
        node = self.found[key][1]
        path = join_key(self.path, key)
        items = self.r.sequence(node, path, f"expected {expected}")
        return [self.r.scalar(item, item_key(path, i)) for i, item in enumerate(items)]

    def int_list(self, key: str, minimum: int = 0) -> tuple[int, ...]:
        values = self._items(key, "a list of integers")
        for item in values:
            if not isinstance(item, int) or isinstance(item, bool) or item < minimum:
                self.fail(f"expected integers >= {minimum}, got {item!r}", key)
        if len(set(values)) != len(values):
            self.fail(f"duplicate entries in {values}", key)
        return tuple(values)  # type: ignore[arg-type]

    def str_list(self, key: str) -> tuple[str, ...]:
        values = self._items(key, "a list of non-empty strings")
        if not all(isinstance(v, str) and v for v in values):
            self.fail(f"expected a list of non-empty strings, got {values!r}", key)
        if len(set(values)) != len(values):
            self.fail("duplicate entries", key)
        return tuple(values)  # type: ignore[arg-type]

    def child(self, key: str, keys: Collection[str], optional: Collection[str] = ()) -> _Table:
        return _Table(self.r, self.found[key][1], join_key(self.path, key), keys, optional)

    def rows(self, key: str, keys: Collection[str]) -> list[_Table]:
        path = join_key(self.path, key)
        items = self.r.sequence(self.found[key][1], path, "expected a list")
        return [_Table(self.r, item, item_key(path, i), keys) for i, item in enumerate(items)]

    def placements(self, key: str, axis: int) -> tuple[tuple[int, int], ...]:
        """``{starts: [...], size: n}`` (the ``-lgipp`` form) -> ((start, size), ...)."""
        node = self.child(key, ("starts", "size"))
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


_TOP_KEYS = frozenset({f.name for f in dataclasses.fields(GpuModel)} | {"sources"})
_GI_KEYS = frozenset(f.name for f in dataclasses.fields(GiModel))
_CI_KEYS = frozenset(f.name for f in dataclasses.fields(CiModel))
_INFO_COUNTS = (
    "multiprocessor_count",
    "copy_engine_count",
    "decoder_count",
    "encoder_count",
    "jpeg_count",
    "ofa_count",
)


def _parse_ci(row: _Table, gi: GiModel) -> CiModel:
    index = row.integer("index")
    if index >= CI_PROFILE_INDEX_COUNT:
        row.fail(f"not an NVML_COMPUTE_INSTANCE_PROFILE_* index: {index}", "index")
    slices = row.integer("slice_count", minimum=1)
    if slices != CI_INDEX_SLICES[index]:
        row.fail(f"CI profile index {index} has {CI_INDEX_SLICES[index]} slice(s), not {slices}")
    if not ci_fits(slices, gi.slice_count):
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


def _parse_gi(row: _Table, slot_count: int, compute_slices: int, total_bytes: int) -> GiModel:
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
    cis = tuple(_parse_ci(ci_row, gi) for ci_row in row.rows("compute_instances", _CI_KEYS))
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


def _check_unique(table: _Table, key: str, values: list[Any], what: str) -> None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            table.fail(f"duplicate {what} {value!r}", key)
        seen.add(value)


def _check_synthesized(top: _Table, paths: tuple[str, ...], gis: tuple[GiModel, ...]) -> None:
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


def _read_model(r: YamlReader, root: YamlNode | None) -> GpuModel:
    if root is None:
        raise ModelDataError(f"{r.source}: the file is empty")
    top = _Table(r, root, "", _TOP_KEYS)
    sources = top.str_list("sources")
    if not sources:
        top.fail("expected a non-empty list of source notes", "sources")
    mig_capable = top.boolean("mig_capable")
    slot_count = top.integer("slot_count")
    total_bytes = top.integer("memory_total_bytes", minimum=1)
    compute_slices = top.integer("compute_slices")
    gis = tuple(
        _parse_gi(row, slot_count, compute_slices, total_bytes)
        for row in top.rows("gi_profiles", _GI_KEYS)
    )
    _check_unique(top, "gi_profiles", [gi.index for gi in gis], "GI profile index")
    _check_unique(top, "gi_profiles", [gi.id for gi in gis], "GI profile id")
    _check_unique(top, "gi_profiles", [gi.name for gi in gis], "GI profile name")

    errors = top.child("profile_index_errors", (), _ERROR_CODES)
    index_errors = sorted(
        (index, _ERROR_CODES[code_name])
        for code_name in errors.found
        for index in errors.int_list(code_name)
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
        if any(code != nvml_codes.NOT_SUPPORTED for _, code in index_errors):
            top.fail("a GPU without MIG answers NOT_SUPPORTED only", "profile_index_errors")

    synthesized = top.str_list("synthesized")
    _check_synthesized(top, synthesized, gis)

    model = GpuModel(
        key=top.string("key"),
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


def parse_model(data: bytes, source: str) -> GpuModel:
    """Check one model file (its bytes) and build its :class:`GpuModel`.

    ``source`` names the file in error messages. Raises :class:`ModelDataError`.
    """
    try:
        return read_yaml_document(data, source, _read_model, packaged=True)
    except ConfigError as exc:
        raise ModelDataError(str(exc)) from None


# ---------------------------------------------------------------------------
# The packaged models
# ---------------------------------------------------------------------------

_PACKAGE = "migd.formats"
_MODELS_DIR = "gpu-models"


def _models_dir() -> Path:
    # Beside this module, as migd is installed (a directory, never a zip): a plain path
    # spares every process that reads a model importlib.resources' readers (~2 ms).
    return Path(__file__).with_name(_MODELS_DIR)


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


@functools.cache
def _load_key(key: str) -> GpuModel:
    source = f"{_MODELS_DIR}/{key}.yaml"
    try:
        data = _models_dir().joinpath(f"{key}.yaml").read_bytes()
    except OSError as exc:
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
