"""Shared helpers of the reliability tests: the simulated node read in-process, metrics
scraped from a running daemon, waits on the daemon's published state, summary lines.

The daemon itself is run with ``tests/daemon_support.py`` (``running``, ``Daemon``);
the simulated node is changed with ``migd sim`` where a test is about what an operator
does, and through the simulator's own store (the code behind ``migd sim``) where a loop
of hundreds of steps would otherwise spend its time starting Python.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon_support import Daemon, wait_for
from daemon_support import free_port as free_port  # the reliability tests import it here
from prometheus_client.parser import text_string_to_metric_families

from migd.commands.sim import describe
from migd.sim import faults as sim_faults
from migd.sim.state import CallFault, Faults, NodeState
from migd.sim.store import StateStore
from migd.sim.symbols import MUTATING

# The summary line of every test, printed at the end of the run (see conftest.py).
SUMMARIES: list[str] = []


def summary(area: str, text: str) -> str:
    """Record (and print) the one line of figures a test reports."""
    line = f"{area}: {text}"
    SUMMARIES.append(line)
    print(line)
    return line


# ---------------------------------------------------------------------------
# The simulated node, read and changed in-process
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """A GPU instance as the simulated hardware holds it. ``serial`` never repeats over
    the node's life, so an instance destroyed and created again has a new one."""

    gpu: int
    gi: int
    profile: str
    start: int
    size: int
    serial: int
    cis: int  # compute instances inside it


@dataclass(frozen=True)
class SimGpu:
    index: int
    mig: bool  # MIG mode as it is now
    pending: bool  # MIG mode once the GPU is reset
    instances: tuple[Instance, ...]

    def counts(self) -> dict[str, int]:
        """``{"1g.18gb": 2, ...}``: GPU-instance profiles held, and how many of each."""
        return dict(Counter(i.profile for i in self.instances))

    def serials(self) -> frozenset[int]:
        return frozenset(i.serial for i in self.instances)


def read_node(state: Path) -> NodeState:
    store = StateStore(state)
    try:
        return store.read()
    finally:
        store.close()


def gpus(state: Path) -> tuple[SimGpu, ...]:
    """Every GPU of the simulated node: mode and GPU instances (with their serials)."""
    node = read_node(state)
    shown = describe(node)["gpus"]
    result = []
    for gpu, doc in zip(node.gpus, shown, strict=True):
        instances = tuple(
            Instance(
                gpu=gpu.index,
                gi=gi.id,
                profile=gi_doc["profile"],
                start=gi.start,
                size=gi.size,
                serial=gi.serial,
                cis=len(gi.compute_instances),
            )
            for gi, gi_doc in zip(gpu.gpu_instances, doc["gpu_instances"], strict=True)
        )
        result.append(SimGpu(gpu.index, gpu.mig_current == 1, gpu.mig_pending == 1, instances))
    return tuple(result)


def shown(state: Path) -> dict[str, Any]:
    """``migd sim show --json`` without its faults: what the hardware holds."""
    doc = describe(read_node(state))
    doc.pop("faults")
    return doc


def clone_node(source: Path, target: Path) -> None:
    """``target`` becomes a new simulated node holding exactly what ``source`` holds
    (no faults, an empty call log): the same hardware, booted afresh."""
    node = read_node(source)
    store = StateStore(target)
    try:
        store.create(dataclasses.replace(node, faults=Faults()))
    finally:
        store.close()


def replace_file(path: Path, data: bytes, mode: int = 0o644, owner: int | None = None) -> None:
    """An editor's save of ``data`` (bytes, whatever they are): a new file, with its mode
    and owner already set, renamed over the old one."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    if owner is not None:
        os.chown(tmp, owner, -1)
    os.replace(tmp, path)


def change_faults(state: Path, change: Callable[[NodeState], NodeState]) -> None:
    """Set faults as ``migd sim fault`` does (the same functions, the same lock)."""
    store = StateStore(state)
    try:
        store.transaction(lambda tx: tx.commit(change(tx.node)))
    finally:
        store.close()


def set_kill(state: Path, at: int, after_effect: bool) -> None:
    """``migd sim fault STATE --kill-at AT [--after-effect]``."""
    change_faults(state, lambda node: sim_faults.set_kill(node, at, after_effect))


def add_call_fault(state: Path, fault: CallFault) -> None:
    """``migd sim fault STATE --call ... --code ...`` (``after``/``count``/``gpu`` as given)."""
    change_faults(state, lambda node: sim_faults.add_call_fault(node, fault))


def clear_faults(state: Path) -> None:
    """``migd sim fault STATE --clear``."""
    change_faults(state, sim_faults.clear)


def call_stats(state: Path) -> dict[str, dict[str, int]]:
    """``migd sim stats --json``: calls per C symbol and result, every process."""
    store = StateStore(state)
    try:
        return store.stats()
    finally:
        store.close()


def mutating_calls(state: Path) -> int:
    """How many mutating NVML calls (whatever they returned) the node has seen."""
    stats = call_stats(state)
    return sum(sum(stats.get(symbol, {}).values()) for symbol in MUTATING)


def mutating_results(state: Path, result: str) -> int:
    """Mutating calls that returned ``result`` (``IN_USE``, ``SUCCESS``…)."""
    stats = call_stats(state)
    return sum(stats.get(symbol, {}).get(result, 0) for symbol in MUTATING)


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


def layout_config(
    configs: Mapping[str, Mapping[int, Mapping[str, int] | None]],
    *,
    selected: str,
    settings: str = "",
    comment: str = "",
) -> str:
    """A config whose mig-configs give each GPU (by index) its own layout: a profile
    count map, or None for MIG disabled. Metrics off and drift checks off unless
    ``settings`` (YAML lines under ``settings:``, indented by two) says otherwise."""
    lines = [f"# {comment}" if comment else "# migd reliability test", "version: v1"]
    lines += [f"selected-config: {selected}", "settings:"]
    lines += (settings or "  metrics: {address: null}\n  drift-check: {interval: 0}").splitlines()
    lines.append("mig-configs:")
    for name, per_gpu in configs.items():
        lines.append(f"  {name}:")
        for index, layout in per_gpu.items():
            lines.append(f"    - devices: [{index}]")
            if layout is None:
                lines.append("      mig-enabled: false")
            else:
                counts = ", ".join(f'"{p}": {n}' for p, n in layout.items())
                lines += ["      mig-enabled: true", f"      mig-devices: {{{counts}}}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# The running daemon: its published state and its metrics
# ---------------------------------------------------------------------------

SETTLED = ("ready", "degraded")


def settled(daemon: Daemon, generation: int, timeout: float = 30.0) -> dict[str, Any]:
    """The daemon's state once reload ``generation`` (or a later one) has an outcome."""

    def check() -> dict[str, Any] | None:
        doc = daemon.state_doc()
        if doc.get("reload_generation", -1) >= generation and doc.get("phase") in SETTLED:
            return doc
        return None

    return wait_for(check, f"reload {generation} settled", timeout=timeout, interval=0.02)


def status_json(daemon: Daemon) -> dict[str, Any]:
    proc = daemon.status("--json")
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(url: str, context: ssl.SSLContext | None = None, timeout: float = 20.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        return parse_metrics(response.read().decode())


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= got)


def label_values(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``{value of label: sum}`` over the samples of ``name``."""
    out: dict[str, float] = {}
    for (n, got), v in samples.items():
        if n == name:
            key = dict(got).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def rss_kib(pid: int) -> int:
    """The process's resident set size (``VmRSS`` of /proc/PID/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def first(items: Iterable[str], fragment: str) -> str | None:
    return next((item for item in items if fragment in item), None)
