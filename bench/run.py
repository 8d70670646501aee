"""Run the benchmarks and write their figures: ``python -m bench [--quick]``.

Each section measures migd and its baseline in the same run, on the same machine,
so every figure can be read as a ratio even when the machine is busy. The results
go to BENCHMARKS.md (or ``--output``) with the command that produced them and the
machine they ran on, and, with ``--json``, as data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bench import (
    apply_time,
    disruption,
    footprint,
    oneshot,
    planner_time,
    reaction,
    report,
    scope,
    scrape,
)


@dataclass(frozen=True)
class Sizes:
    """How much each section does: the full run, or the quick smoke run."""

    random_transitions: int
    apply_repeats: int
    apply_latency_scale: float
    edits: int
    starts: int
    oneshot_runs: int
    idle_seconds: float
    scrape_samples: int
    scrape_latency_scale: float
    planner_repeats: int
    slot_order_combinations: int


FULL = Sizes(
    random_transitions=200,
    apply_repeats=3,
    apply_latency_scale=1.0,
    edits=100,
    starts=5,
    oneshot_runs=10,
    idle_seconds=60.0,
    scrape_samples=200,
    scrape_latency_scale=1.0,
    planner_repeats=5,
    slot_order_combinations=9,
)
# Quick: the same code paths, fewer samples and a tenth of the call latencies, so it
# runs in CI in well under a minute. Its timings are not figures to quote.
QUICK = Sizes(
    random_transitions=10,
    apply_repeats=1,
    apply_latency_scale=0.1,
    edits=10,
    starts=1,
    oneshot_runs=2,
    idle_seconds=5.0,
    scrape_samples=20,
    scrape_latency_scale=0.1,
    planner_repeats=1,
    slot_order_combinations=2,
)

SECTIONS: dict[str, Callable[[str, Sizes], dict[str, Any]]] = {
    "disruption": lambda d, s: disruption.measure(d, random_transitions=s.random_transitions),
    "apply_time": lambda d, s: apply_time.measure(
        d, gpus=8, repeats=s.apply_repeats, scale=s.apply_latency_scale
    ),
    "reaction": lambda d, s: reaction.measure(d, edits=s.edits),
    "footprint": lambda d, s: footprint.measure(d, starts=s.starts, idle_seconds=s.idle_seconds),
    "oneshot": lambda d, s: oneshot.measure(d, runs=s.oneshot_runs),
    "scope": lambda d, s: scope.measure(
        d, random_transitions=s.random_transitions, combinations=s.slot_order_combinations
    ),
    "scrape": lambda d, s: scrape.measure(
        d, samples=s.scrape_samples, latency_scale=s.scrape_latency_scale
    ),
    "planner": lambda d, s: planner_time.measure(
        random_transitions=s.random_transitions, repeats=s.planner_repeats
    ),
}


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """What the figures ran on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "uname": " ".join(os.uname()),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load_average": list(os.getloadavg()),
    }


@contextlib.contextmanager
def workdir(given: str | None, keep: bool) -> Iterator[str]:
    """A directory for the simulated nodes, daemons' runtime dirs and configs.

    On tmpfs when there is one, so the simulator's fsyncs of its state file do not
    dominate what is measured (real hardware has no state file to sync).
    """
    if given:
        os.makedirs(given, exist_ok=True)
        yield given
        return
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    path = tempfile.mkdtemp(prefix="migd-bench-", dir=base)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure migd against mig-parted's strategy and plain baselines on the "
        "simulator; write the figures to BENCHMARKS.md.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smoke version: every section, few samples, a tenth of the call latencies "
        "(well under a minute; its timings are not figures to quote)",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="where to write the report, - for standard output (default: BENCHMARKS.md; "
        "with --only: standard output; with --quick: nowhere, the headline is printed)",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="also write the results as JSON (default for a full run: bench/results.json, "
        "committed with BENCHMARKS.md so that the next run compares against it)",
    )
    parser.add_argument(
        "--previous",
        metavar="FILE",
        help="the previous run's JSON, to show each figure as a ratio against it (default: "
        "the JSON file this run replaces, when there is one)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SECTIONS),
        metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument("--workdir", metavar="DIR", help="keep the simulated nodes here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args(argv)


DEFAULT_JSON = "bench/results.json"


def _previous(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            found: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return None
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    full = not args.quick and not args.only
    json_path = args.json or (DEFAULT_JSON if full and args.output is None else None)
    # Read before this run replaces it. A quick run's figures are no baseline.
    previous = _previous(args.previous or json_path)
    if not args.previous and previous is not None and previous.get("meta", {}).get("quick"):
        previous = None
    shown = argv if argv is not None else sys.argv[1:]
    results: dict[str, Any] = {
        "meta": {
            "command": shlex.join(["python", "-m", "bench", *shown]),
            "quick": args.quick,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": machine(),
            "seconds": {},
        },
    }
    began = time.monotonic()
    with workdir(args.workdir, args.keep) as directory:
        for name, run in SECTIONS.items():
            if args.only and name not in args.only:
                continue
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            results[name] = run(directory, sizes)
            results["meta"]["seconds"][name] = time.monotonic() - started
    results["meta"]["total_seconds"] = time.monotonic() - began
    results["meta"]["load_average_end"] = list(os.getloadavg())
    text = report.render(results, previous)
    # Only a full run of every section replaces BENCHMARKS.md by default; a partial
    # run prints its report, a quick one only its headline.
    default = None if args.quick else "-" if args.only else "BENCHMARKS.md"
    output = args.output if args.output is not None else default
    if output == "-":
        sys.stdout.write(text)
    elif output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"bench: wrote {output}", file=sys.stderr)
    if output != "-":
        sys.stdout.write(report.headline_text(results))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, sort_keys=False)
            f.write("\n")
    print(f"bench: done in {results['meta']['total_seconds']:.1f} s", file=sys.stderr)
    return 0
