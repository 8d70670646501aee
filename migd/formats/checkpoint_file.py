"""The checkpoint file: the exact MIG geometry of GPUs (``migd.core.checkpoint``), as JSON.

``migd checkpoint`` writes it and ``migd restore`` reads it, versioned; this module is
the only place the format is parsed. Every problem is reported with its key path.

The file (``version`` is required and checked first)::

    {"version": "v1", "kind": "migd-checkpoint", "driver_version": "580.159.04",
     "gpus": [{"index": 0, "uuid": "GPU-…", "bus_id": "00000000:19:00.0",
               "mig_enabled": true,
               "gpu_instances": [
                 {"profile_id": 9, "profile": "3g.71gb", "placement": {"start": 4, "size": 4},
                  "compute_instances": [
                    {"profile_id": 2, "profile": "3g.71gb",
                     "placement": {"start": 0, "size": 4}}]}]}]}

``profile`` fields are for the reader; restoring uses the ids.

A checkpoint written by ``nvidia-mig-parted checkpoint`` (``api/checkpoint/v1``:
``{"Version": "v1", "MigState": {"Devices": [{"UUID", "MigMode", "GpuInstances":
[{"ProfileID", "Placement": {"Start", "Size"}, "ComputeInstances": [{"ProfileID",
"EngProfileID"}]}]}]}}``) is read too, as a
:class:`migd.core.parted_checkpoint.PartedCheckpoint`: its profile indices become
profile ids on the node it is restored on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from migd.core.checkpoint import Checkpoint, CiRecord, GiRecord, GpuRecord
from migd.core.layout import Placement
from migd.core.parted_checkpoint import PartedCheckpoint, PartedCi, PartedGi, PartedGpu
from migd.errors import ConfigError, Problem
from migd.formats.files import atomic_write

VERSION = "v1"
KIND = "migd-checkpoint"


# ---------------------------------------------------------------------------
# The JSON file
# ---------------------------------------------------------------------------


def _placement_dict(p: Placement) -> dict[str, int]:
    return {"start": p.start, "size": p.size}


def to_dict(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "version": VERSION,
        "kind": KIND,
        "driver_version": checkpoint.driver_version,
        "gpus": [
            {
                "index": g.index,
                "uuid": g.uuid,
                "bus_id": g.bus_id,
                "mig_enabled": g.mig_enabled,
                "gpu_instances": [
                    {
                        "profile_id": gi.profile_id,
                        "profile": gi.profile,
                        "placement": _placement_dict(gi.placement),
                        "compute_instances": [
                            {
                                "profile_id": ci.profile_id,
                                "profile": ci.profile,
                                "placement": _placement_dict(ci.placement),
                            }
                            for ci in gi.compute_instances
                        ],
                    }
                    for gi in g.instances
                ],
            }
            for g in checkpoint.gpus
        ],
    }


def dumps(checkpoint: Checkpoint) -> str:
    return json.dumps(to_dict(checkpoint), indent=2) + "\n"


class _Reader:
    """Walks the parsed document, collecting every problem with its key path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.source, None, None, path, message))

    def get(self, obj: Mapping[str, Any], key: str, kind: type, path: str) -> Any:
        where = f"{path}.{key}" if path else key
        if key not in obj:
            self.problem(where, "missing")
            return None
        value = obj[key]
        # bool is an int in Python; a count or id must not be written as true/false.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(where, f"must be {kind.__name__}, not {type(value).__name__}")
            return None
        return value

    def placement(self, obj: Mapping[str, Any], path: str) -> Placement | None:
        raw = self.get(obj, "placement", dict, path)
        if raw is None:
            return None
        start = self.get(raw, "start", int, f"{path}.placement")
        size = self.get(raw, "size", int, f"{path}.placement")
        if start is None or size is None:
            return None
        if start < 0 or size < 1:
            self.problem(f"{path}.placement", "start must be ≥ 0 and size ≥ 1")
            return None
        return Placement(start, size)


def loads(text: str, source: str = "<checkpoint>") -> Checkpoint | PartedCheckpoint:
    """Parse a checkpoint file, migd's or mig-parted's; ConfigError names every problem."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError.of_file(source, exc.msg, exc.lineno, exc.colno) from None
    reader = _Reader(source)
    if not isinstance(doc, dict):
        raise ConfigError.of_file(source, "a checkpoint is a JSON object")
    if "MigState" in doc or "Version" in doc:
        return _parted(doc, reader)
    if doc.get("version") != VERSION:
        raise ConfigError(
            [
                Problem(
                    source,
                    None,
                    None,
                    "version",
                    f"unsupported checkpoint version {doc.get('version')!r} (expected {VERSION!r})",
                )
            ]
        )
    if doc.get("kind", KIND) != KIND:
        reader.problem("kind", f"not a migd checkpoint (kind {doc.get('kind')!r})")
    gpus = []
    for i, raw_gpu in enumerate(reader.get(doc, "gpus", list, "") or []):
        path = f"gpus[{i}]"
        if not isinstance(raw_gpu, dict):
            reader.problem(path, "must be an object")
            continue
        index = reader.get(raw_gpu, "index", int, path)
        uuid = reader.get(raw_gpu, "uuid", str, path)
        enabled = reader.get(raw_gpu, "mig_enabled", bool, path)
        instances = []
        for j, raw_gi in enumerate(reader.get(raw_gpu, "gpu_instances", list, path) or []):
            gi_path = f"{path}.gpu_instances[{j}]"
            if not isinstance(raw_gi, dict):
                reader.problem(gi_path, "must be an object")
                continue
            profile_id = reader.get(raw_gi, "profile_id", int, gi_path)
            placement = reader.placement(raw_gi, gi_path)
            cis = []
            for k, raw_ci in enumerate(
                reader.get(raw_gi, "compute_instances", list, gi_path) or []
            ):
                ci_path = f"{gi_path}.compute_instances[{k}]"
                if not isinstance(raw_ci, dict):
                    reader.problem(ci_path, "must be an object")
                    continue
                ci_profile = reader.get(raw_ci, "profile_id", int, ci_path)
                ci_placement = reader.placement(raw_ci, ci_path)
                if ci_profile is not None and ci_placement is not None:
                    cis.append(CiRecord(ci_profile, ci_placement, str(raw_ci.get("profile", ""))))
            if profile_id is not None and placement is not None:
                instances.append(
                    GiRecord(
                        profile_id, placement, tuple(sorted(cis)), str(raw_gi.get("profile", ""))
                    )
                )
        if enabled is False and instances:
            reader.problem(path, "a GPU with MIG disabled cannot hold GPU instances")
        if index is not None and uuid is not None and enabled is not None:
            gpus.append(
                GpuRecord(
                    index=index,
                    uuid=uuid,
                    mig_enabled=enabled,
                    instances=tuple(sorted(instances)),
                    bus_id=str(raw_gpu.get("bus_id", "")),
                )
            )
    uuids = [g.uuid for g in gpus]
    for uuid in sorted({u for u in uuids if uuids.count(u) > 1}):
        reader.problem("gpus", f"GPU {uuid} appears more than once")
    if reader.problems:
        raise ConfigError(reader.problems)
    return Checkpoint(gpus=tuple(gpus), driver_version=str(doc.get("driver_version", "")))


def _parted(doc: Mapping[str, Any], reader: _Reader) -> PartedCheckpoint:
    """mig-parted's checkpoint (Go's JSON of ``checkpoint.State``; nil lists are null)."""
    if doc.get("Version") != VERSION:
        reader.problem(
            "Version",
            f"unsupported mig-parted checkpoint version {doc.get('Version')!r} "
            f"(expected {VERSION!r})",
        )
        raise ConfigError(reader.problems)
    state = reader.get(doc, "MigState", dict, "") or {}
    gpus = []
    for i, raw_gpu in enumerate(_items(reader, state, "Devices", "MigState")):
        path = f"MigState.Devices[{i}]"
        uuid = reader.get(raw_gpu, "UUID", str, path)
        mode = reader.get(raw_gpu, "MigMode", int, path)
        if mode not in (None, 0, 1):
            reader.problem(f"{path}.MigMode", f"must be 0 (disabled) or 1 (enabled), not {mode}")
        instances = []
        for j, raw_gi in enumerate(_items(reader, raw_gpu, "GpuInstances", path)):
            gi_path = f"{path}.GpuInstances[{j}]"
            index = reader.get(raw_gi, "ProfileID", int, gi_path)
            raw_place = reader.get(raw_gi, "Placement", dict, gi_path)
            placement = None
            if raw_place is not None:
                start = reader.get(raw_place, "Start", int, f"{gi_path}.Placement")
                size = reader.get(raw_place, "Size", int, f"{gi_path}.Placement")
                if start is not None and size is not None and start >= 0 and size >= 1:
                    placement = Placement(start, size)
                elif start is not None and size is not None:
                    reader.problem(f"{gi_path}.Placement", "Start must be ≥ 0 and Size ≥ 1")
            cis = []
            for k, raw_ci in enumerate(_items(reader, raw_gi, "ComputeInstances", gi_path)):
                ci_path = f"{gi_path}.ComputeInstances[{k}]"
                ci_index = reader.get(raw_ci, "ProfileID", int, ci_path)
                engine = raw_ci.get("EngProfileID", 0)
                if ci_index is not None:
                    cis.append(PartedCi(ci_index, engine if isinstance(engine, int) else -1))
            if index is not None and placement is not None:
                instances.append(PartedGi(index, placement, tuple(cis)))
        if uuid is not None and mode in (0, 1):
            gpus.append(PartedGpu(uuid, mode == 1, tuple(instances)))
    if reader.problems:
        raise ConfigError(reader.problems)
    return PartedCheckpoint(tuple(gpus))


def _items(reader: _Reader, obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    """The objects of the list ``obj[key]``; Go writes an empty list as null or leaves it out."""
    if obj.get(key) is None:
        return []
    items = reader.get(obj, key, list, path) or []
    where = f"{path}.{key}" if path else key
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            reader.problem(f"{where}[{i}]", "must be an object")
    return [item for item in items if isinstance(item, dict)]


def read(path: str | Path) -> Checkpoint | PartedCheckpoint:
    """Read a checkpoint file ('-' = stdin)."""
    if str(path) == "-":
        return loads(sys.stdin.read(), "<stdin>")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError.of_file(str(path), f"cannot read: {exc}") from None
    return loads(text, str(path))


def write(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write a checkpoint atomically ('-' = stdout): a reader never sees half a file."""
    text = dumps(checkpoint)
    if str(path) == "-":
        sys.stdout.write(text)
        return
    # Readable by its owner only, as saved geometry always was; on disk before it counts.
    atomic_write(Path(path), text.encode(), mode=0o600, durable=True)
