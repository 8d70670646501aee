"""The packages of migd import along its layers, as each package's ``__init__`` says.

A pure core that decides, file formats parsed in one place, the GPU side that alone
talks NVML, the node around the GPUs, the daemon, the simulator and the verbs: each
may use what lies below it and nothing else. Read from the source, so an import
hidden in a function or under ``TYPE_CHECKING`` counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from paths import REPO

PACKAGE = REPO / "migd"

# What each part of migd may import from migd itself (a module always may import its
# own package). Parts are packages, or the shared modules at the top.
MIGD_IMPORTS = {
    "migd.errors": set(),
    "migd.log": set(),
    "migd.command": {"migd.errors"},
    "migd.core": {"migd.errors"},
    "migd.formats": {"migd.errors", "migd.core"},
    "migd.gpu": {"migd.errors", "migd.command", "migd.core", "migd.formats"},
    "migd.node": {"migd.errors", "migd.command", "migd.core", "migd.formats", "migd.gpu"},
    "migd.daemon": {
        "migd.errors",
        "migd.command",
        "migd.core",
        "migd.formats",
        "migd.gpu",
        "migd.node",
    },
    "migd.sim": {"migd.errors", "migd.core", "migd.formats"},
    # The face: the command line and its verbs use everything.
    "migd.commands": None,
    "migd.cli": None,
    "migd": None,
}

# Modules outside migd that a part must never import. The pure core does no I/O, keeps
# no threads and runs no programs; only the NVML adapter and the simulated library
# (which sits under pynvml) import pynvml.
NOT_IN_THE_CORE = {
    "pynvml",
    "subprocess",
    "threading",
    "concurrent",
    "os",
    "pathlib",
    "io",
    "shutil",
    "tempfile",
    "socket",
    "signal",
    "time",
    "yaml",
    "watchdog",
    "prometheus_client",
}
NEVER = {
    "migd.core": NOT_IN_THE_CORE,
    "migd.formats": {
        "pynvml",
        "subprocess",
        "threading",
        "concurrent",
        "socket",
        "watchdog",
        "prometheus_client",
    },
    "migd.errors": NOT_IN_THE_CORE,
}
PYNVML_ALLOWED = ("migd.gpu.nvml", "migd.sim")


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def _part(module: str) -> str:
    """The part a module belongs to: the longest key of MIGD_IMPORTS it lies in."""
    keys = [k for k in MIGD_IMPORTS if module == k or module.startswith(k + ".")]
    return max(keys, key=len)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # "from migd.core import names": the submodule is what is used.
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


MODULES = _modules()


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_imports_follow_the_layers(module: str, path: Path) -> None:
    part = _part(module)
    allowed = MIGD_IMPORTS[part]
    imported = _imports(path)
    if allowed is not None:
        wrong = {
            name
            for name in imported
            if name.startswith("migd.")
            and name != "migd.__version__"  # the root package holds only the version
            and _part(name) not in {part, *allowed}
        }
        assert not wrong, f"{module} ({part}) may not import {sorted(wrong)}"
    forbidden = NEVER.get(part, set())
    top = {name.split(".")[0] for name in imported}
    assert not top & forbidden, f"{module} imports {sorted(top & forbidden)}"
    if "pynvml" in top:
        assert module.startswith(PYNVML_ALLOWED), f"{module} imports pynvml"


def test_every_package_says_what_lives_there_and_what_it_may_import() -> None:
    for name, path in MODULES:
        if path.name != "__init__.py" or name == "migd":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{name} has no docstring"
        if name in MIGD_IMPORTS and MIGD_IMPORTS[name] is not None:
            assert "May import" in doc, f"{name} does not say what it may import"
