"""Test support for the adapter, reconciler and geometry verbs: simulated nodes in-process.

Tests run migd's real adapter through the real pynvml on the simulator. To stay fast
they build, inspect and fault the simulated node through the simulator's own Python
API (the functions behind ``migd sim init|process|fault|stats``) instead of a
``migd sim`` process per step; the CLI-level tests use the commands themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from migd import sim
from migd.core import nvml_codes
from migd.core.config import Config
from migd.core.layout import DesiredGpu, NodeSnapshot
from migd.core.selection import desired_layouts
from migd.formats.config_file import parse_config
from migd.gpu.executor import ReconcileOptions, ReconcileResult
from migd.gpu.nvml import NvmlAdapter
from migd.node.change import NodeServices, apply_with_services
from migd.sim import faults, node
from migd.sim.state import CallFault, Flags, NodeState
from migd.sim.store import StateStore
from migd.sim.symbols import MUTATING

H200 = "H200-SXM-141GB"
A100 = "A100-SXM4-40GB"


@contextlib.contextmanager
def scratch_dir(fallback: Path) -> Iterator[Path]:
    """A scratch directory on tmpfs when there is one, else ``fallback``.

    The simulator fsyncs its STATE file on every change (a killed daemon must leave the
    "hardware" as it was); on a disk under load that is milliseconds per NVML mutation.
    """
    base = Path("/dev/shm")
    if not (base.is_dir() and os.access(base, os.W_OK)):
        yield fallback
        return
    path = Path(tempfile.mkdtemp(prefix="migd-test-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_node(
    path: Path,
    models: Iterable[str],
    *,
    clients: bool = True,
    passthrough: bool = False,
    root: bool = True,
) -> Path:
    """A freshly booted simulated node (MIG off everywhere) in ``path``; pynvml points at it."""
    flags = Flags(system_clients=clients, passthrough=passthrough, root=root)
    StateStore(path).create(node.new_node(list(models), seed=path.name, flags=flags))
    sim.activate(path)
    return path


def edit_node(path: Path, change: Callable[[NodeState], NodeState]) -> None:
    """Change the simulated node as ``migd sim process|fault`` would."""
    StateStore(path).transaction(lambda tx: tx.commit(change(tx.node)))


def read_node(path: Path) -> NodeState:
    return StateStore(path).read()


def restart_from(path: Path, state: NodeState) -> None:
    """Put the node back to ``state`` with a fresh call log (as after ``sim init``)."""
    StateStore(path).create(state)


def power_cycled(state: NodeState) -> NodeState:
    """The node after a reboot of a Hopper node: MIG off, no instances, no processes."""
    return dataclasses.replace(
        state,
        gpus=tuple(
            dataclasses.replace(g, mig_current=0, mig_pending=0, gpu_instances=())
            for g in state.gpus
        ),
        processes=(),
    )


def add_process(path: Path, pid: int, gpu: int, gi: int | None, ci: int | None = None) -> None:
    edit_node(path, lambda n: node.add_process(n, pid, gpu, gi, ci))


def add_fault(
    path: Path,
    call: str,
    code: str,
    *,
    after: int = 0,
    count: int | None = 1,
    gpu: int | None = None,
    latency_ms: float = 0.0,
) -> None:
    fault = CallFault(
        call=call,
        gpu=gpu,
        code=nvml_codes.parse_code(code) if code else None,
        after=after,
        count=count,
        latency_ms=latency_ms,
    )
    edit_node(path, lambda n: faults.add_call_fault(n, fault))


def stats(path: Path) -> dict[str, dict[str, int]]:
    """``migd sim stats --json``: {symbol: {result: count}} since the node was made."""
    return StateStore(path).stats()


def mutating_calls(counts: Mapping[str, Mapping[str, int]]) -> int:
    return sum(sum(r.values()) for s, r in counts.items() if s in MUTATING)


def failed_calls(counts: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    return {
        s: {r: n for r, n in results.items() if r != "SUCCESS"}
        for s, results in counts.items()
        if any(r != "SUCCESS" for r in results)
    }


def delta(
    after: Mapping[str, Mapping[str, int]], before: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for symbol, results in after.items():
        for result, n in results.items():
            d = n - before.get(symbol, {}).get(result, 0)
            if d:
                out.setdefault(symbol, {})[result] = d
    return out


def geometry(state: NodeState) -> dict[int, tuple]:
    """What each simulated GPU holds: mode and (profile, placement, CIs) of every GI."""
    return {
        g.index: (
            g.mig_current,
            g.mig_pending,
            tuple(
                sorted(
                    (
                        gi.profile_id,
                        gi.start,
                        gi.size,
                        tuple(
                            sorted((c.profile_id, c.start, c.size) for c in gi.compute_instances)
                        ),
                    )
                    for gi in g.gpu_instances
                )
            ),
        )
        for g in state.gpus
    }


def gi_ids(state: NodeState, gpu: int) -> dict[tuple[int, int, int], int]:
    """(profile, start, size) → GI id of every GI on one simulated GPU."""
    return {(gi.profile_id, gi.start, gi.size): gi.id for gi in state.gpus[gpu].gpu_instances}


def config_text(
    layouts: Mapping[str, str],
    selected: str | None = None,
    settings: Mapping[str, object] | None = None,
) -> str:
    """A small mig-parted config: name → one 'devices: all' entry (``""`` = MIG off),
    with ``settings:`` as given (written as JSON, which YAML reads)."""
    lines = ["version: v1"]
    if selected:
        lines.append(f"selected-config: {selected}")
    if settings:
        lines.append(f"settings: {json.dumps(settings)}")
    lines.append("mig-configs:")
    for name, layout in layouts.items():
        lines.append(f"  {name}:")
        if layout == "":
            lines += ["    - devices: all", "      mig-enabled: false"]
            continue
        lines += ["    - devices: all", "      mig-enabled: true", "      mig-devices:"]
        for part in filter(None, layout.split(",")):
            name_, count = part.split("=")
            lines.append(f'        "{name_.strip()}": {count.strip()}')
        if not layout.strip(","):
            lines[-1] = "      mig-devices: {}"
    return "\n".join(lines) + "\n"


def resolve(snapshot: NodeSnapshot, text: str, name: str) -> tuple[DesiredGpu, ...]:
    config = parse_config(text.encode(), "test.yaml")
    return desired_layouts(snapshot, config.entries(name))


def apply_config(
    nvml: NvmlAdapter, config: Config, name: str, options: ReconcileOptions | None = None
) -> ReconcileResult:
    """What ``migd apply`` does with a loaded config: the services its settings name, then
    :func:`migd.node.change.apply_with_services`, the path the daemon takes too."""
    services = NodeServices.from_settings(config.settings)
    options = options or ReconcileOptions()
    report = apply_with_services(nvml, config, name, options, services, post_boot=True)
    assert report.result is not None  # a report without one is raised (ChangeAborted)
    return report.result


def apply_text(text: str, name: str, options: ReconcileOptions | None = None) -> ReconcileResult:
    """``migd apply`` in-process, for a config given as text."""
    config = parse_config(text.encode(), "test.yaml")
    with NvmlAdapter.open() as nvml:
        return apply_config(nvml, config, name, options)


def snapshot() -> NodeSnapshot:
    with NvmlAdapter.open(read_only=True) as nvml:
        return nvml.snapshot()


def sim_reset_command(state: Path, log: Path | None = None) -> tuple[str, ...]:
    """``migd sim reset STATE --bus-id {bus_ids}``, optionally logging each bus-id list."""
    script = (
        "import sys\n"
        "from migd.cli import main\n"
        f"log = {str(log) if log else ''!r}\n"
        "if log:\n"
        "    open(log, 'a').write(sys.argv[1] + '\\n')\n"
        f"sys.exit(main(['sim', 'reset', {str(state)!r}, '--bus-id', sys.argv[1]]))\n"
    )
    return (sys.executable, "-c", script, "{bus_ids}")


def run_migd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``migd`` command as a user would (no inherited MIGD_* selection)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIGD_", "MIG_PARTED_"))}
    return subprocess.run(
        [sys.executable, "-m", "migd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
