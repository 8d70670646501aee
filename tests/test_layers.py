"""The packages of migd import along its layers, as each package's ``__init__`` says.

A pure core that decides, file formats parsed in one place, the GPU side that alone
talks NVML, the node around the GPUs, the daemon, the simulator and the verbs: each
may use what lies below it and nothing else. Read from the source, so an import
hidden in a function or under ``TYPE_CHECKING`` counts too.

At run time, a one-shot verb loads only what it uses: never the daemon's HTTP server,
metrics or file watcher, and nothing of the simulator unless asked for it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from clean_env import clean_environ
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


# ---------------------------------------------------------------------------
# At run time: what a one-shot verb loads
# ---------------------------------------------------------------------------

# Runs the migd command as its entry point does, then records what it loaded.
_RECORD_MODULES = """\
import json, sys
from migd.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""

# What only the daemon needs: a one-shot verb that loads it pays for it at every call.
DAEMON_ONLY = ("prometheus_client", "watchdog", "http.server", "ssl", "migd.daemon.")


def _loaded(tmp_path: Path, *args: str, environ: dict[str, str] | None = None) -> set[str]:
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", _RECORD_MODULES, str(out), *args],
        env=clean_environ(environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(out.read_text())["modules"])


def _starting_with(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.startswith(prefixes) or m in prefixes)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("node")
    state, config = directory / "node.json", directory / "config.yaml"
    subprocess.run(
        [sys.executable, "-m", "migd", "sim", "init", str(state), "--gpu", "H200x2"],
        env=clean_environ(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    config.write_text(
        "version: v1\nmig-configs:\n  half:\n    - devices: all\n      mig-enabled: true\n"
        '      mig-devices: {"3g.71gb": 2}\n'
    )
    config.chmod(0o644)
    return state, config


@pytest.mark.parametrize(
    ("verb", "unused"),
    [
        ("plan", ("migd.gpu.executor", "migd.node.", "migd.formats.export")),
        ("assert", ("migd.gpu.executor", "migd.node.", "migd.core.planner")),
        ("export", ("migd.gpu.executor", "migd.node.", "migd.core.planner")),
    ],
)
def test_a_one_shot_verb_loads_neither_the_daemon_nor_what_it_does_not_use(
    tmp_path: Path, node: tuple[Path, Path], verb: str, unused: tuple[str, ...]
) -> None:
    state, config = node
    args = [verb] if verb == "export" else [verb, "-f", str(config)]
    modules = _loaded(tmp_path, "--simulate", str(state), *args)
    assert "migd.gpu.nvml" in modules and "migd.sim.fakelib" in modules  # it did its work
    assert not _starting_with(modules, DAEMON_ONLY)
    assert not _starting_with(modules, unused)


@pytest.mark.parametrize("verb", ["plan", "assert", "export"])
def test_without_simulate_a_verb_loads_nothing_of_the_simulator(
    tmp_path: Path, node: tuple[Path, Path], verb: str
) -> None:
    """The path a verb takes on hardware: the simulator stays out of the process."""
    state, config = node
    # The node is named by MIGD_SIMULATE in one run, and by nothing in the other (NVML
    # then opens whatever driver the machine has, if any: the exit code may vary).
    args = [verb] if verb == "export" else [verb, "-f", str(config)]
    out = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", _RECORD_MODULES, str(out), *args],
        env=clean_environ(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert not _starting_with(set(json.loads(out.read_text())["modules"]), ("migd.sim",))
    simulated = _loaded(tmp_path, *args, environ={"MIGD_SIMULATE": str(state)})
    assert "migd.sim.fakelib" in simulated


def test_validate_loads_no_nvml(tmp_path: Path, node: tuple[Path, Path]) -> None:
    _, config = node
    modules = _loaded(tmp_path, "validate", "-f", str(config))
    assert not _starting_with(modules, ("pynvml", "migd.sim", "migd.gpu.", *DAEMON_ONLY))
