"""The checkpoint format and the restore diff, pure."""

from __future__ import annotations

import dataclasses
import json

import pytest

from migd.core.gpu_models import blank_gpu
from migd.core.layout import ComputeInstance, GpuInstance, NodeSnapshot, Placement
from migd.errors import ConfigError
from migd.formats.checkpoint_file import (
    Checkpoint,
    CiRecord,
    GiRecord,
    GpuRecord,
    capture,
    capture_gpu,
    dumps,
    gpu_matches,
    loads,
    restore_diff,
)
from migd.formats.gpu_models import load_model


def h200(instances=(), enabled=True):  # type: ignore[no-untyped-def]
    return dataclasses.replace(
        blank_gpu(load_model("H200"), 0, mig_enabled=enabled), instances=tuple(instances)
    )


THREE = GpuInstance(
    2,
    9,
    Placement(4, 4),
    (ComputeInstance(0, 0, Placement(0, 1)), ComputeInstance(1, 0, Placement(1, 1), (42,))),
)
SMALL = GpuInstance(7, 19, Placement(0, 1), (ComputeInstance(0, 0, Placement(0, 1)),))


def test_round_trip_keeps_every_placement() -> None:
    saved = capture(NodeSnapshot((h200([THREE, SMALL]),), driver_version="580.159.04"))
    text = dumps(saved)
    doc = json.loads(text)
    assert doc["version"] == "v1" and doc["kind"] == "migd-checkpoint"
    gi = next(g for g in doc["gpus"][0]["gpu_instances"] if g["profile_id"] == 9)
    assert gi["profile"] == "3g.71gb" and gi["placement"] == {"start": 4, "size": 4}
    assert [c["profile"] for c in gi["compute_instances"]] == ["1c.3g.71gb", "1c.3g.71gb"]
    assert loads(text) == saved
    assert gpu_matches(h200([SMALL, THREE]), saved.gpus[0])
    assert not gpu_matches(h200([SMALL]), saved.gpus[0])


def test_every_problem_is_reported_with_its_path() -> None:
    doc = {
        "version": "v1",
        "gpus": [
            {"index": 0, "uuid": "GPU-a", "mig_enabled": "yes", "gpu_instances": []},
            {
                "index": 1,
                "uuid": "GPU-b",
                "mig_enabled": True,
                "gpu_instances": [{"profile_id": 9, "placement": {"start": -1, "size": 4}}],
            },
            {"index": 2, "uuid": "GPU-b", "mig_enabled": False, "gpu_instances": []},
        ],
    }
    with pytest.raises(ConfigError) as raised:
        loads(json.dumps(doc), "cp.json")
    text = str(raised.value)
    assert "cp.json: gpus[0].mig_enabled: must be bool, not str" in text
    assert "gpus[1].gpu_instances[0].compute_instances: missing" in text
    assert "gpus[1].gpu_instances[0].placement: start must be ≥ 0" in text
    assert "GPU GPU-b appears more than once" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"version": "v2", "gpus": []}', "unsupported checkpoint version 'v2'"),
        ("[]", "a checkpoint is a JSON object"),
        ('{"version": "v1",\n "gpus": [}', "cp.json:2:"),
    ],
)
def test_foreign_files_are_refused(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        loads(text, "cp.json")
    assert expected in str(raised.value)


def test_restore_diff_keeps_what_matches_and_fixes_the_rest() -> None:
    record = capture_gpu(h200([THREE, SMALL]))
    # Now: the 3g lost a CI and a 2g sits where the 1g was.
    two = GpuInstance(3, 14, Placement(0, 2), (ComputeInstance(0, 1, Placement(0, 2)),))
    trimmed = dataclasses.replace(THREE, compute_instances=THREE.compute_instances[:1])
    diff = restore_diff(h200([trimmed, two]), record)
    assert diff.destroy_cis == ((3, 0),)
    assert diff.destroy_gis == (3,)
    assert diff.create_cis == ((2, CiRecord(0, Placement(1, 1))),)
    assert diff.create_gis == (GiRecord(19, Placement(0, 1), (CiRecord(0, Placement(0, 1)),)),)
    assert diff.set_mode is None and diff.busy == ()
    assert restore_diff(h200([THREE, SMALL]), record).noop


def test_restore_diff_names_busy_instances_and_mode_changes() -> None:
    record = GpuRecord(0, h200().uuid, mig_enabled=False)
    diff = restore_diff(h200([THREE]), record)
    assert diff.set_mode is False
    assert diff.destroy_gis == (2,) and diff.busy == ((2, (42,)),)
    pending = dataclasses.replace(h200(enabled=False), mig_pending=True)
    assert restore_diff(pending, record).set_mode is False  # a pending change is withdrawn
    assert Checkpoint((record,)).by_uuid(record.uuid) is record
