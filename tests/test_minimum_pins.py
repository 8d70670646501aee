"""``.ci/minimum-pins``: the runtime dependencies pinned at the floors pyproject.toml
declares, which .ci/run installs to run the daemon's smoke test (tests/test_smoke.py)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from paths import REPO

SCRIPT = REPO / ".ci" / "minimum-pins"


def script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("minimum_pins", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def pyproject(tmp_path: Path, *dependencies: str) -> Path:
    path = tmp_path / "pyproject.toml"
    listed = ", ".join(f'"{d}"' for d in dependencies)
    path.write_text(f'[project]\nname = "x"\ndependencies = [{listed}]\n')
    return path


def test_each_floor_becomes_a_pin(tmp_path: Path) -> None:
    path = pyproject(
        tmp_path, "a-b>=1.2.3,<2", "C_d[extra] >= 0.14.0", "e>=4.0.0,!=4.0.1; python_version>'3'"
    )
    assert script().floors(path) == {"a-b": "1.2.3", "C_d": "0.14.0", "e": "4.0.0"}


@pytest.mark.parametrize("requirement", ["a<2", "a==1.0", "a", "a>=1,>=2"])
def test_a_dependency_without_one_floor_is_refused(tmp_path: Path, requirement: str) -> None:
    with pytest.raises(SystemExit, match=f"'{requirement}' has no single '>=' floor"):
        script().floors(pyproject(tmp_path, requirement))


def test_the_project_pins_every_runtime_dependency() -> None:
    module = script()
    with open(REPO / "pyproject.toml", "rb") as f:
        declared = module.tomllib.load(f)["project"]["dependencies"]
    printed = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(printed) == len(declared) == 4
    for line, requirement in zip(printed, declared, strict=True):
        name, floor = line.split("==")
        assert requirement.startswith(f"{name}>={floor},")
