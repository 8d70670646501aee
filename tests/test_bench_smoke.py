"""The benchmarks' quick run (``python -m bench --quick``): it runs and its figures are sane.

Nothing here asserts a timing: the machine is shared. The NVML call counts of the
disruption comparison are deterministic (the simulated driver's slot order, seeded
transitions), so those are asserted: migd makes one create per GPU instance, never
fails a call and never destroys an instance the new layout could keep; the
mig-parted model destroys such instances, and its hardest layout needs the orderings
mig-parted's algorithm is known to need.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "disruption",
    "apply_time",
    "reaction",
    "footprint",
    "scrape",
    "planner",
    "oneshot",
    "scope",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench")
    report, data = out / "BENCHMARKS.md", out / "results.json"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "MIGD_SIMULATE")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(report), "--json", str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,  # liveness only: the quick run takes well under a minute
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(data.read_text()), report.read_text()


def test_every_section_ran_and_the_report_names_its_command(
    run: tuple[dict[str, Any], str],
) -> None:
    results, report = run
    assert set(SECTIONS) <= set(results)
    meta = results["meta"]
    assert meta["quick"] is True
    assert meta["command"].startswith("python -m bench --quick")
    assert meta["machine"]["nproc"] >= 1 and meta["machine"]["uname"]
    assert report.startswith("# Benchmarks")
    assert "Command: `python -m bench --quick" in report
    headings = ("## Headline", *(f"## {n}. " for n in range(1, 9)))
    for heading in headings:
        assert heading in report


def _tools(results: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    tools = results["disruption"]["tools"]
    migparted = [v for k, v in tools.items() if k.startswith("mig-parted")]
    assert len(migparted) == 2  # 1g.18gb and 1g.35gb tie: both map orders are modelled
    return tools["migd"], migparted


def test_migd_creates_each_instance_once_and_keeps_what_it_can(
    run: tuple[dict[str, Any], str],
) -> None:
    results, _ = run
    d = results["disruption"]
    assert d["layouts"] == 127
    migd, _ = _tools(results)
    for layout in migd["per_layout"]:
        assert layout["gi_create_calls"] == layout["instances"], layout
        assert layout["ci_create_calls"] == layout["instances"], layout
        assert layout["mutating"] == 2 * layout["instances"], layout
        assert layout["failed"] == 0 and layout["gi_destroys"] == 0, layout
    changes = migd["transitions"]["totals"]
    assert changes["scenarios"] == d["transitions"] and changes["failed_scenarios"] == 0
    assert changes["calls"]["failed"] == 0
    assert changes["keepable"] > 0
    assert changes["kept"] == changes["keepable"]
    assert changes["destroyed_keepable"] == 0


def test_the_migparted_model_destroys_keepable_instances(
    run: tuple[dict[str, Any], str],
) -> None:
    results, _ = run
    migd, migparted = _tools(results)
    for tool in migparted:
        changes = tool["transitions"]["totals"]
        assert changes["failed_scenarios"] == 0
        assert changes["kept"] == 0  # it clears the GPU before every change
        assert changes["destroyed_keepable"] == changes["keepable"] > 0
        assert changes["calls"]["mutating"] > migd["transitions"]["totals"]["calls"]["mutating"]
        named = {r["name"]: r for r in tool["transitions"]["named"]}
        assert named["two 1g -> one 2g"]["destroyed_keepable"] == 5
    named_migd = {r["name"]: r for r in migd["transitions"]["named"]}
    # Two 1g GPU instances and their compute instances go, one 2g and its CI come.
    assert named_migd["two 1g -> one 2g"]["calls"]["mutating"] == 6


def test_the_migparted_model_needs_the_known_orderings(run: tuple[dict[str, Any], str]) -> None:
    """mig-parted's worst H200 layout: 11 or 41 orderings, 56 or 206 GPU instances made."""
    results, _ = run
    _, migparted = _tools(results)
    worst = sorted(
        (
            t["from_empty"]["worst_orderings"]["orderings"],
            t["from_empty"]["worst_orderings"]["gi_created"],
        )
        for t in migparted
    )
    assert worst == [(11, 56), (41, 206)]
    for tool in migparted:
        assert tool["from_empty"]["totals"]["failed_scenarios"] == 0
        assert tool["from_empty"]["totals"]["calls"]["failed"] > 0


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def test_the_timed_sections_produced_figures(run: tuple[dict[str, Any], str]) -> None:
    results, _ = run
    for scenario in results["apply_time"]["scenarios"]:
        tools = scenario["tools"]
        assert len(tools) == 3
        assert all(_finite(t["seconds"]) and t["seconds"] > 0 for t in tools.values())
        calls = {t["mutating_calls"] for name, t in tools.items() if name.startswith("migd")}
        assert len(calls) == 1  # parallel or not, migd makes the same calls
    r = results["reaction"]
    for key in ("file_to_reconcile_started", "file_to_reconciled", "reload_round_trip"):
        assert r[key]["n"] == r["edits"] and _finite(r[key]["p50"]), key
    f = results["footprint"]
    assert _finite(f["start_to_ready"]["migd"]["p50"])
    assert f["memory_kib"]["migd"]["VmRSS"] > 0 and f["memory_kib"]["baseline"]["VmRSS"] > 0
    s = results["scrape"]
    assert s["instances"] == 56 and s["body_bytes"] > 0
    assert s["idle"]["n"] > 0 and _finite(s["idle"]["p50"])
    p = results["planner"]
    assert p["from_empty"]["planner"]["n"] == 127
    assert _finite(p["transition"]["planner"]["p50"])


def test_one_shot_verbs_and_their_baselines_ran(run: tuple[dict[str, Any], str]) -> None:
    results, _ = run
    rows = results["oneshot"]["rows"]
    assert set(rows) == {"bare reader", "bare init", "export", "assert", "plan"}
    for row in rows.values():
        assert _finite(row["seconds"]["p50"]) and row["seconds"]["p50"] > 0
        # Peak RSS of the command itself, not of the benchmark that started it.
        assert 0 < row["peak_rss_kib"]["p50"] < 200 * 1024


def test_what_the_migparted_figures_rest_on(run: tuple[dict[str, Any], str]) -> None:
    results, report = run
    scope = results["scope"]
    orders = scope["slot_orders"]
    assert orders["synthesized"] == ["1g.18gb+me", "1g.35gb"]
    assumed = orders["combinations"][0]["tools"]
    # The assumed orders are those of section 1: the same calls.
    for name, walks in assumed.items():
        section1 = results["disruption"]["tools"][name]["from_empty"]["totals"]["calls"]
        assert walks["from_empty"]["calls"]["mutating"] == section1["mutating"]
    mode = scope["mode_change"]["tools"]
    assert mode["migd"]["gpus_reset"] == 1 and mode["migd"]["other_gpus_touched"] == 0
    model = mode["mig-parted model"]
    assert model["gpus_reset"] == 8 and model["other_gpus_touched"] == 7
    assert model["other_gis_destroyed"] == model["other_gis_before"] > 0
    services = {s["name"]: s for s in scope["services"]["scenarios"]}
    noop = services["node already right (a boot, a restart)"]
    assert noop["migd"]["hooks"] == [] and noop["mig-parted"]["processes"] == 4
    assert "over the plausible slot orders" in report


def test_a_run_is_compared_with_the_previous_one(run: tuple[dict[str, Any], str]) -> None:
    from bench import report

    results, _ = run
    text = report.render(results, results)
    section = text.split("## 9. Against the previous run", 1)[1].split("\n## ", 1)[0]
    assert "| start -> READY, p50 |" in section
    assert "1.00×" in section and "(regression)" not in section
