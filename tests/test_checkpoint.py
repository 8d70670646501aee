"""The checkpoint: capturing a GPU's exact geometry, and the file format. Pure."""

from __future__ import annotations

import dataclasses
import json

import pytest

from migd.core.checkpoint import (
    capture,
    gpu_matches,
)
from migd.core.gpu_models import blank_gpu
from migd.core.layout import ComputeInstance, GpuInstance, NodeSnapshot, Placement
from migd.errors import ConfigError
from migd.formats.checkpoint_file import dumps, loads
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
