"""The default /etc/migd/config.yaml (configs/config.yaml) leaves every GPU as it is.

The package installs it as a conffile; until the operator names a layout, the daemon
must change nothing on any GPU, whatever the GPU model and whatever it already holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from daemon_support import migd, sim
from paths import REPO
from reliability_support import mutating_calls

from migd.formats.gpu_models import load_model, model_names
from migd.sim.store import StateStore

DEFAULT_CONFIG = REPO / "configs" / "config.yaml"
MODELS = sorted({load_model(name).key for name in model_names()})


def test_every_simulated_model_is_checked() -> None:
    shipped = {p.stem for p in (REPO / "migd" / "formats" / "gpu-models").glob("*.yaml")}
    assert len(MODELS) == len(shipped) >= 10


@pytest.mark.parametrize("model", MODELS)
def test_the_default_config_validates_for_every_model(model: str) -> None:
    checked = migd("validate", "-f", str(DEFAULT_CONFIG), "--gpu-model", model)
    assert checked.returncode == 0, checked.stderr
    assert "selected: unmanaged (selected-config in the file)" in checked.stdout


def test_the_default_config_plans_and_applies_no_change_on_any_model(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """One node with two GPUs of every simulated model: of each MIG-capable pair, one
    holds a layout and one has MIG on and no instance. Nothing may change on any."""
    state = tmp_path / "node.json"
    sim("init", str(state), *(f"--gpu={model}x2" for model in MODELS))
    held = migd("--simulate", str(state), "apply", "-f", str(DEFAULT_CONFIG), "-c", "all-balanced")
    assert held.returncode == 0, held.stderr
    store = StateStore(state)
    request.addfinalizer(store.close)
    emptied = [str(g.index) for g in store.read().gpus if g.index % 2 == 0 and g.gpu_instances]
    sim("reset", str(state), "--gpu", ",".join(emptied))
    before = store.read()
    assert any(g.gpu_instances for g in before.gpus)
    assert any(g.mig_current and not g.gpu_instances for g in before.gpus)
    calls_before = mutating_calls(state)

    planned = migd("--simulate", str(state), "plan", "-f", str(DEFAULT_CONFIG), "--json")
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout) == {"config": "unmanaged", "gpus": []}
    applied = migd("--simulate", str(state), "apply", "-f", str(DEFAULT_CONFIG))
    assert applied.returncode == 0, applied.stderr
    asserted = migd("--simulate", str(state), "assert", "-f", str(DEFAULT_CONFIG))
    assert asserted.returncode == 0, asserted.stderr

    assert mutating_calls(state) == calls_before
    assert store.read() == before
