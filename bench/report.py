"""BENCHMARKS.md from the results of one run: figures, their baselines, the command, the machine.

Rendering only: every number comes from the results dictionary ``bench.run`` builds,
so the file never holds a figure that the recorded command did not produce.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bench.apply_time import MIGD_PAR, MIGD_SEQ, MIGPARTED
from bench.disruption import MIGD

Row = Sequence[object]


def _ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    ms = seconds * 1000
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    if ms >= 0.1:
        return f"{ms:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _x(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if value >= 100:
        return f"{value:.0f}×"
    if value >= 10:
        return f"{value:.1f}×"
    return f"{value:.2f}×"


def _n(count: int, word: str, plural: str | None = None) -> str:
    """``1 ordering``, ``41 orderings``."""
    return f"{count} {word}" if count == 1 else f"{count} {plural or word + 's'}"


def _table(head: Row, rows: Iterable[Row]) -> list[str]:
    lines = ["| " + " | ".join(str(h) for h in head) + " |"]
    lines.append("|" + "|".join("---" for _ in head) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _div(a: float, b: float) -> float | None:
    return a / b if b else None


# ---------------------------------------------------------------------------
# Headline
# ---------------------------------------------------------------------------


def _migparted_tools(d: Mapping[str, Any]) -> list[str]:
    return [name for name in d["tools"] if name != MIGD]


def headline(results: Mapping[str, Any]) -> list[str]:
    """The figures worth quoting, one line each (also printed by ``--quick``)."""
    lines = []
    scope = results.get("scope")
    d = results.get("disruption")
    if d:
        m = d["tools"][MIGD]
        mp = _migparted_tools(d)
        calls = [d["tools"][t]["from_empty"]["totals"]["calls"]["mutating"] for t in mp]
        base = m["from_empty"]["totals"]["calls"]["mutating"]
        worst = [d["tools"][t]["from_empty"]["worst_orderings"] for t in mp]
        lines.append(
            f"Every one of the {d['layouts']} H200 layouts from an empty GPU: migd makes "
            f"{base} mutating NVML calls (one create per GPU and compute instance, none "
            f"failed); the mig-parted model makes "
            + " or ".join(f"{c} ({_x(_div(c, base))})" for c in calls)
            + " depending on Go's map order, "
            + " or ".join(str(d["tools"][t]["from_empty"]["totals"]["calls"]["failed"]) for t in mp)
            + " of them failed. On its hardest layout it tries "
            + " or ".join(str(w["orderings"]) for w in worst)
            + " orderings and creates "
            + " or ".join(str(w["gi_created"]) for w in worst)
            + " GPU instances to end with "
            + f"{worst[0]['instances']} ({worst[0]['after']})."
            + f" Expected over Go's map order: {sum(calls) / len(calls):.0f} calls "
            f"({_x(_div(sum(calls) / len(calls), base))})"
            + (f"; {slot_order_range(scope['slot_orders'], 'from_empty')}." if scope else ".")
        )
        mt = m["transitions"]["totals"]
        tt = [d["tools"][t]["transitions"]["totals"] for t in mp]
        lines.append(
            f"{d['transitions']} layout changes: migd destroys {mt['destroyed_keepable']} of the "
            f"{mt['keepable']} instances the new layout could keep; the mig-parted model destroys "
            + " / ".join(f"{t['destroyed_keepable']} of {t['keepable']}" for t in tt)
            + ", with "
            + " / ".join(_x(_div(t["calls"]["mutating"], mt["calls"]["mutating"])) for t in tt)
            + " migd's mutating calls (expected over Go's map order: "
            + _x(_div(sum(t["calls"]["mutating"] for t in tt) / len(tt), mt["calls"]["mutating"]))
            + (f"; {slot_order_range(scope['slot_orders'], 'transition')})." if scope else ").")
        )
    a = results.get("apply_time")
    if a:
        for s in a["scenarios"]:
            t = s["tools"]
            lines.append(
                f"8 GPUs, {s['before']} -> {s['after']}: migd {_s(t[MIGD_PAR]['seconds'])} in "
                f"parallel, {_s(t[MIGD_SEQ]['seconds'])} sequential, mig-parted model "
                f"{_s(t[MIGPARTED]['seconds'])} ({_x(t[MIGD_PAR]['speedup'])} and "
                f"{_x(t[MIGD_SEQ]['speedup'])} faster; simulated per-call latencies)."
            )
    if scope:
        mc = scope["mode_change"]
        m, p = mc["tools"]["migd"], mc["tools"]["mig-parted model"]
        lines.append(
            f"A MIG mode change on 1 of {mc['gpus']} {mc['model']}: migd makes {m['mutating']} "
            f"mutating calls and resets {m['gpus_reset']} GPU, leaving the other "
            f"{mc['gpus'] - 1} untouched; the mig-parted model makes {p['mutating']} "
            f"({_x(_div(p['mutating'], m['mutating']))}), resets {p['gpus_reset']} GPUs and "
            f"destroys all {p['other_gis_destroyed']} GPU instances of the other "
            f"{p['other_gpus_touched']}."
        )
        sv = {sc["name"]: sc for sc in scope["services"]["scenarios"]}
        noop = sv["node already right (a boot, a restart)"]
        mode = sv["MIG mode change on 1 of 8 GPUs"]
        lines.append(
            "Around a change: mig-parted's unit starts "
            f"{noop['mig-parted']['processes']} processes (each initialising NVML) even when "
            f"the node is already right, {mode['mig-parted']['processes']} for a mode change, "
            f"in which its pre-Hopper hooks stop units {mode['mig-parted']['unit_stops']} times "
            f"(kubelet {mode['mig-parted']['kubelet_stops']} times); migd's running daemon "
            f"starts none, runs no hook when nothing changes, and runs each hook once per change "
            f"(units stopped {mode['migd']['unit_stops']} times with the same hooks file)."
        )
    r = results.get("reaction")
    if r:
        lines.append(
            f"Config saved -> reconcile started: p50 {_ms(r['file_to_reconcile_started']['p50'])}, "
            f"p99 {_ms(r['file_to_reconcile_started']['p99'])} (of which "
            f"{_ms(r['debounce_seconds'])} deliberate debounce); `migd reload` round trip with an "
            f"edit applied: p50 {_ms(r['reload_round_trip']['p50'])} = "
            f"{_x(r['ratios']['reload_vs_version_p50'])} a bare `migd --version`."
        )
    f = results.get("footprint")
    if f:
        lines.append(
            f"Start to READY on a node already right: {_ms(f['start_to_ready']['migd']['p50'])} "
            f"({_x(f['start_to_ready']['ratio_p50'])} a bare pynvml process); idle "
            f"{f['idle_cpu_seconds']['migd_percent_of_one_core']:.2f} % of a core; RSS "
            f"{f['memory_kib']['migd']['VmRSS'] / 1024:.0f} MiB "
            f"({_x(f['memory_kib']['rss_ratio'])} the bare process)."
        )
    o = results.get("oneshot")
    if o:
        rows = o["rows"]
        lines.append(
            "One-shot verbs ("
            + ", ".join(
                f"`{v}` {_ms(rows[v]['seconds']['p50'])}, "
                f"{rows[v]['peak_rss_kib']['p50'] / 1024:.0f} MiB"
                for v in oneshot_verbs(o)
            )
            + f"): {_x(max(rows[v]['vs_reader']['seconds_p50'] for v in oneshot_verbs(o)))} "
            "the wall time and "
            f"{_x(max(rows[v]['vs_reader']['peak_rss_p50'] for v in oneshot_verbs(o)))} the "
            "peak RSS of a bare pynvml process reading the same GPUs, at most ("
            f"{_x(max(rows[v]['vs_init']['seconds_p50'] for v in oneshot_verbs(o)))} and "
            f"{_x(max(rows[v]['vs_init']['peak_rss_p50'] for v in oneshot_verbs(o)))} one that "
            "only initialises NVML)."
        )
    sc = results.get("scrape")
    if sc:
        lines.append(
            f"/metrics on {sc['gpus']}×7 instances: p50 {_ms(sc['idle']['p50'])} "
            f"(p99 {_ms(sc['idle']['p99'])}) idle, "
            f"{_ms(sc['during_apply']['p50'])} (p99 {_ms(sc['during_apply']['p99'])}) "
            "during an apply "
            f"({_x(sc['ratios']['during_vs_idle_p50'])} idle); a plain http.server: "
            f"{_ms(sc['plain_http_server']['p50'])}."
        )
    p = results.get("planner")
    if p:
        lines.append(
            f"Planning a layout: p50 {_ms(p['from_empty']['planner']['p50'])} from empty, "
            f"{_ms(p['transition']['planner']['p50'])} for a change "
            f"({_x(p['transition']['vs_oracle_p50'])} a brute-force feasibility/keep check)."
        )
    return lines


def headline_text(results: Mapping[str, Any]) -> str:
    return "".join(f"- {line}\n" for line in headline(results))


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def _disruption(d: Mapping[str, Any]) -> list[str]:
    mp = _migparted_tools(d)
    m = d["tools"][MIGD]
    out = [
        "## 1. Disruption and NVML calls per change",
        "",
        f"One simulated {d['gpu']}; every scenario on a fresh node with a fresh call log, "
        "counted with the simulator's call log (`migd sim stats`). migd runs the path "
        "`migd apply` and the daemon take (config, then selection, planner and executor "
        "inside the node's hooks and client units, none configured here) in-process; "
        "mig-parted is "
        "`bench/migparted_model.py`, a model of v0.15.0's apply over plain pynvml: clear the "
        "GPU, then try orderings of the desired list (sorted G desc, C desc, attributes desc), "
        "creating each GPU instance with no placement (the simulated driver picks slots in the "
        "order seen on A100/H100) and then its compute instance, clearing and moving to the "
        "next ordering on any failure. Profiles that tie in that sort (1g.18gb and 1g.35gb) "
        "come in Go's random map order, so the model runs once per order. When the previous "
        "entry had the same profile it first tries to add the compute instance to the previous "
        "GPU instance, as mig-parted does (`reuseGI`); on a full GPU instance that fails, so "
        "repeated profiles cost it one failed compute-instance create each.",
        "",
        "Mutating calls are creates and destroys of GPU and compute instances (and mode "
        'changes, none here). "Keepable" counts the instances present before a change that '
        "some complete arrangement of the new layout keeps where they are (brute force over "
        'subsets, `bench/layouts.py`); "destroyed keepable" is how many of those a tool '
        "destroyed anyway.",
        "",
        "### Check of the mig-parted model",
        "",
    ]
    rows = []
    for t in mp:
        w = d["tools"][t]["from_empty"]["worst_orderings"]
        rows.append(
            (
                t,
                w["after"],
                w["orderings"],
                f"{w['calls']['gi_creates']} ({w['gi_created']} succeed)",
                w["calls"]["mutating"],
            )
        )
    out += _table(
        (
            "tie order",
            "layout needing most orderings",
            "orderings",
            "GI create calls",
            "mutating calls",
        ),
        rows,
    )
    out += [
        "Expected from mig-parted's algorithm on the H200: 11 or 41 orderings and 56 or 206 "
        "GPU instances created, depending on the tie order; each failed ordering also makes "
        "one refused GI create.",
        "",
        f"### All {d['layouts']} layouts from an empty GPU",
        "",
    ]
    base = m["from_empty"]["totals"]
    rows = []
    for t in [MIGD, *mp]:
        tot = d["tools"][t]["from_empty"]["totals"]
        c = tot["calls"]
        worst = d["tools"][t]["from_empty"]["worst"]
        rows.append(
            (
                t,
                c["mutating"],
                _x(_div(c["mutating"], base["calls"]["mutating"])),
                c["failed"],
                f"{c['gi_creates']} ({tot['gi_created']})",
                c["gi_destroys"],
                tot["orderings"] or "—",
                f"{worst['after']}: {worst['calls']['mutating']}",
                tot["failed_scenarios"],
            )
        )
    out += _table(
        (
            "tool",
            "mutating calls",
            "vs migd",
            "failed calls",
            "GI create calls (created)",
            "GIs destroyed",
            "orderings",
            "worst layout: calls",
            "layouts not reached",
        ),
        rows,
    )
    out += [
        f"### {d['transitions']} layout changes "
        f"({d['named_transitions']} named, the rest seeded random pairs)",
        "",
        "Each tool starts from the layout as it placed it itself.",
        "",
    ]
    base = m["transitions"]["totals"]
    rows = []
    for t in [MIGD, *mp]:
        tot = d["tools"][t]["transitions"]["totals"]
        worst = d["tools"][t]["transitions"]["worst"]
        c = tot["calls"]
        rows.append(
            (
                t,
                c["mutating"],
                _x(_div(c["mutating"], base["calls"]["mutating"])),
                c["failed"],
                c["gi_destroys"],
                f"{tot['kept']} of {tot['held_before']}",
                tot["keepable"],
                tot["destroyed_keepable"],
                tot["scenarios_destroying_keepable"],
                f"{worst['before']} -> {worst['after']}: {worst['calls']['mutating']}",
            )
        )
    out += _table(
        (
            "tool",
            "mutating calls",
            "vs migd",
            "failed calls",
            "GIs destroyed",
            "GIs kept",
            "keepable",
            "destroyed keepable",
            "changes destroying keepable",
            "worst change: calls",
        ),
        rows,
    )
    out += ["### Named changes", ""]
    named = {t: d["tools"][t]["transitions"]["named"] for t in [MIGD, *mp]}
    rows = []
    for i, run in enumerate(named[MIGD]):
        cells = [f"{run['name']}: {run['before']} -> {run['after']}"]
        for t in [MIGD, *mp]:
            r = named[t][i]
            cells.append(
                f"{r['calls']['mutating']} calls, {r['calls']['failed']} failed, "
                f"{r['destroyed_keepable']}/{r['keepable']} keepable destroyed"
            )
        rows.append(cells)
    out += _table(("change", *[MIGD, *mp]), rows)
    out += ["### The mig-parted model's ten hardest layouts", ""]
    per = {t: {r["layout"]: r for r in d["tools"][t]["per_layout"]} for t in [MIGD, *mp]}
    hardest = sorted(
        per[mp[0]].values(),
        key=lambda r: (-max(per[t][r["layout"]]["orderings"] for t in mp), r["layout"]),
    )[:10]
    rows = []
    for r in hardest:
        cells = [r["layout"], per[MIGD][r["layout"]]["mutating"]]
        for t in mp:
            x = per[t][r["layout"]]
            cells.append(
                f"{x['orderings']} orderings, {x['mutating']} calls ({x['failed']} failed)"
            )
        rows.append(cells)
    out += _table(("layout", "migd calls", *mp), rows)
    return out


def _apply_time(a: Mapping[str, Any]) -> list[str]:
    lat = a["latencies_ms"]
    out = [
        f"## 2. Time to apply: {a['gpus']} GPUs at once",
        "",
        "Per-call latencies set in the simulator (`migd sim fault --call SYMBOL --latency MS`). "
        "They are ASSUMPTIONS chosen for illustration, not measurements: nothing was timed on "
        "hardware. A refused call is charged the same as one that succeeds (the latency "
        "charged to refused calls is shown apart, with the speed-up if refusing cost nothing); "
        "queries get no "
        "added latency (the simulator's own cost is within the 0.01–0.9 ms measured per query "
        "on a real H200).",
        "",
    ]
    if a["latency_scale"] != 1:
        out += [f"(This run scaled them by {a['latency_scale']:g}: quick mode.)", ""]
    out += _table(("NVML call", "latency"), [(f"`{s}`", f"{ms:g} ms") for s, ms in lat.items()])
    out += [
        f"Wall time from the start of the apply to its end, median of {_n(a['repeats'], 'run')}; "
        'the mig-parted model (sequential, as mig-parted is) is the baseline. "Latency '
        'charged" sums the latency of the calls made (what one GPU after another must wait at '
        "least), for the calls the driver performed and apart for those it refused; the last "
        "column compares the wall times less the latency charged to refused calls.",
        "",
    ]
    for s in a["scenarios"]:
        out += [f"**{s['name']}** ({s['before']} -> {s['after']} on each of {s['gpus']} GPUs)", ""]
        rows = []
        for tool, row in s["tools"].items():
            rows.append(
                (
                    tool,
                    _s(row["seconds"]),
                    _x(row["vs_migparted"]),
                    _x(row["speedup"]),
                    row["mutating_calls"],
                    row["failed_calls"],
                    _s(row.get("performed_seconds", row["injected_seconds"])),
                    _s(row.get("refused_seconds", 0.0)),
                    _x(row.get("speedup_without_refused")),
                )
            )
        out += _table(
            (
                "tool",
                "wall time",
                "vs mig-parted",
                "speed-up",
                "mutating calls",
                "failed",
                "latency charged: performed calls",
                "refused calls",
                "speed-up if refusing were free",
            ),
            rows,
        )
    out += [
        "The parallel gain is a property of the simulated latency model: it assumes the driver "
        "serves MIG calls on different GPUs concurrently. Until measured on hardware, only the "
        "sequential figures (fewer calls, no failed orderings) carry over as they are.",
        "",
    ]
    return out


def _pct_row(
    name: str, s: Mapping[str, float], base: Mapping[str, float] | None, base_name: str
) -> Row:
    if base is None:
        return (name, _ms(s["p50"]), _ms(s["p99"]), "", "", "", s["n"])
    return (
        name,
        _ms(s["p50"]),
        _ms(s["p99"]),
        f"{base_name}: {_ms(base['p50'])} / {_ms(base['p99'])}",
        _x(_div(s["p50"], base["p50"])),
        _x(_div(s["p99"], base["p99"])),
        s["n"],
    )


_PCT_HEAD = ("measure", "p50", "p99", "baseline p50 / p99", "ratio p50", "ratio p99", "samples")


def _reaction(r: Mapping[str, Any]) -> list[str]:
    out = [
        "## 3. Reaction to a config edit and to `migd reload`",
        "",
        f"A daemon on {r['gpus']} simulated H200s (no added latency), the config saved as an "
        f"editor saves it (temporary file renamed over it), switching between "
        f"{r['layouts']['a']} and {r['layouts']['b']} so that each save is a real change. "
        '"Reconcile started" is the daemon\'s own `MONOTONIC_USEC=` in its `RELOADING=1`; '
        '"reconciled" the arrival of the `READY=1` after it. The daemon waits '
        f"{_ms(r['debounce_seconds'])} after the last event of a save on purpose (one save "
        "makes several events). The reload round trip is `migd reload` from process start to "
        "exit, right after a save: it returns once the daemon has applied a reading of the "
        "file made after the request.",
        "",
    ]
    out += _table(
        _PCT_HEAD,
        [
            _pct_row(
                "saved -> reconcile started",
                r["file_to_reconcile_started"],
                r["bare_watcher"],
                "bare watchdog observer",
            ),
            _pct_row(
                f"saved -> reconcile started, less the {_ms(r['debounce_seconds'])} debounce",
                r["file_to_reconcile_started_minus_debounce"],
                r["bare_watcher"],
                "bare watchdog observer",
            ),
            _pct_row("saved -> reconciled (READY=1)", r["file_to_reconciled"], None, ""),
            _pct_row(
                "`migd reload` round trip",
                r["reload_round_trip"],
                r["migd_version_round_trip"],
                "`migd --version`",
            ),
        ],
    )
    return out


def _footprint(f: Mapping[str, Any]) -> list[str]:
    sr = f["start_to_ready"]
    cpu = f["idle_cpu_seconds"]
    mem = f["memory_kib"]
    out = [
        "## 4. Footprint",
        "",
        f"{f['gpus']} simulated H200s already holding {f['layout']}: the daemon's first "
        "reconcile is a no-op. It serves metrics and checks for drift every 20 s (the default "
        "is 60 s). Baseline: a bare process that imports pynvml, activates the simulator, "
        "calls `nvmlInit()`, reports `READY=1` the same way and sleeps. Started alternately "
        f"({_n(f['starts'], 'start')} each); then both idle side by side for "
        f"{f['idle_seconds']:g} s. CPU from `/proc/PID/stat` (10 ms ticks), memory from "
        "`/proc/PID/status`.",
        "",
    ]
    out += _table(
        ("measure", "migd", "baseline", "ratio"),
        [
            (
                "process start -> READY=1 (p50)",
                _ms(sr["migd"]["p50"]),
                _ms(sr["baseline"]["p50"]),
                _x(sr["ratio_p50"]),
            ),
            (
                f"CPU over {f['idle_seconds']:g} s idle",
                f"{cpu['migd'] * 1000:.0f} ms ({cpu['migd_percent_of_one_core']:.3f} % of a core)",
                f"{cpu['baseline'] * 1000:.0f} ms",
                _x(cpu["ratio"]) if cpu["ratio"] is not None else "n/a (baseline 0)",
            ),
            (
                "RSS (VmRSS)",
                f"{mem['migd']['VmRSS'] / 1024:.1f} MiB",
                f"{mem['baseline']['VmRSS'] / 1024:.1f} MiB",
                _x(mem["rss_ratio"]),
            ),
            (
                "peak RSS (VmHWM)",
                f"{mem['migd']['VmHWM'] / 1024:.1f} MiB",
                f"{mem['baseline']['VmHWM'] / 1024:.1f} MiB",
                _x(mem["peak_ratio"]),
            ),
        ],
    )
    return out


def _scrape(s: Mapping[str, Any]) -> list[str]:
    out = [
        "## 5. Scrape latency",
        "",
        f"`GET /metrics` on a daemon watching {s['gpus']} simulated H200s with 7 instances "
        f"each ({s['instances']} MIG devices; {s['body_bytes']} bytes per answer), a new "
        "connection per scrape, timed from connect to the last byte. During an apply: the "
        f"config switched between {s['layouts']['all-1g']} and {s['layouts']['balanced']} with "
        "the call latencies of section 2"
        + (f" scaled by {s['latency_scale']:g}" if s["latency_scale"] != 1 else "")
        + f" ({_n(s['applies'], 'apply', 'applies')}); only scrapes between `RELOADING=1` and "
        "`READY=1` count. Baseline: Python's plain `http.server` in its own process serving "
        "a static body of the same size.",
        "",
    ]
    out += _table(
        _PCT_HEAD,
        [
            _pct_row("idle", s["idle"], s["plain_http_server"], "plain http.server"),
            _pct_row(
                "during an apply", s["during_apply"], s["plain_http_server"], "plain http.server"
            ),
            _pct_row("during an apply, vs idle", s["during_apply"], s["idle"], "idle migd"),
        ],
    )
    return out


def _planner(p: Mapping[str, Any]) -> list[str]:
    out = [
        "## 6. Planner",
        "",
        f"`migd.core.planner.plan_gpu` (pure) on every one of the {p['layouts']} layouts from an "
        f"empty H200, and on the {p['transitions']} changes of section 1 (from where migd's own "
        f"plan places the first layout). Each input: the fastest of {_n(p['repeats'], 'call')}; "
        "p50/p99 over the inputs. Baselines on the same inputs: a trivial pure function that "
        "only counts the wanted instances, and the brute-force oracle asking the same question "
        "the simplest way (does it fit, from empty; how many present instances can stay, for "
        "a change). The planner also picks the placements and orders the steps.",
        "",
    ]
    rows = []
    for label, key in (("from empty", "from_empty"), ("change", "transition")):
        x = p[key]
        rows.append(
            (
                label,
                _ms(x["planner"]["p50"]),
                _ms(x["planner"]["p99"]),
                f"{_ms(x['trivial']['p50'])} ({_x(x['vs_trivial_p50'])})",
                f"{_ms(x['oracle']['p50'])} / {_ms(x['oracle']['p99'])} "
                f"({_x(x['vs_oracle_p50'])} / {_x(x['vs_oracle_p99'])})",
            )
        )
    out += _table(
        ("plan", "p50", "p99", "trivial p50 (ratio)", "oracle p50 / p99 (ratios)"),
        rows,
    )
    return out


def oneshot_verbs(o: Mapping[str, Any]) -> list[str]:
    return [name for name in o["rows"] if not name.startswith("bare")]


def _oneshot(o: Mapping[str, Any]) -> list[str]:
    rows = o["rows"]
    out = [
        "## 7. One-shot verbs",
        "",
        f"{o['gpus']} simulated H200s holding {o['layout']}. Each verb runs as its own process "
        "(`migd --simulate STATE VERB`, `assert` and `plan` against a config the node already "
        "holds). Baselines run with the same Python, import pynvml and activate the same "
        "simulator the same way: the bare reader then reads every GPU's handle, UUID and MIG "
        "mode (the least a tool reporting on the GPUs reads); bare init only calls "
        "`nvmlInit()` and `nvmlShutdown()`. Every command runs once untimed (bytecode "
        f"compiled, as installed), then all in turn, {_n(o['runs'], 'time')} each. Wall time "
        "from process start to exit (p50), peak RSS (`ru_maxrss`, p50).",
        "",
    ]
    table = []
    for name, row in rows.items():
        table.append(
            (
                f"`migd {name}`" if name in oneshot_verbs(o) else name,
                _ms(row["seconds"]["p50"]),
                _ms(row["seconds"]["p99"]),
                f"{row['peak_rss_kib']['p50'] / 1024:.1f} MiB",
                f"{_x(row['vs_reader']['seconds_p50'])} / {_x(row['vs_reader']['peak_rss_p50'])}",
                f"{_x(row['vs_init']['seconds_p50'])} / {_x(row['vs_init']['peak_rss_p50'])}",
            )
        )
    out += _table(
        (
            "process",
            "wall p50",
            "wall p99",
            "peak RSS",
            "vs bare reader: wall / RSS",
            "vs bare init: wall / RSS",
        ),
        table,
    )
    out += [
        "A verb loads only what it uses: the parser names every verb but imports no verb's "
        "library, and nothing of the simulator is loaded without `--simulate` or "
        "`MIGD_SIMULATE` (`tests/test_layers.py` holds both).",
        "",
    ]
    return out


def _meta(meta: Mapping[str, Any]) -> list[str]:
    m = meta["machine"]
    start = ", ".join(f"{x:.2f}" for x in m["load_average"])
    end = ", ".join(f"{x:.2f}" for x in meta["load_average_end"])
    busy = max(m["load_average"][0], meta["load_average_end"][0]) > 0.5 * (m["nproc"] or 1)
    lines = [
        f"- Command: `{meta['command']}` from the repository root (with the project's "
        "virtualenv: `.venv/bin/python -m bench`), on "
        f"{meta['started']}, {meta['total_seconds']:.0f} s in all"
        + (" — QUICK MODE: smoke figures, not to be quoted" if meta["quick"] else "")
        + ".",
        f"- Machine: `{m['uname']}`; {m['nproc']} CPUs ({m['cpu']}); {m['python']}.",
        f"- Load average (1, 5, 15 min): {start} at the start, {end} at the end"
        + (
            " — the machine was shared and busy; every figure is a ratio against a baseline "
            "measured in the same run, so that the load affects both sides."
            if busy
            else "."
        ),
        "- Section times: " + ", ".join(f"{k} {v:.0f} s" for k, v in meta["seconds"].items()) + ".",
    ]
    return lines


def _get(results: Mapping[str, Any], *path: Any) -> float | None:
    value: Any = results
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return float(value) if isinstance(value, (int, float)) else None


def key_figures(results: Mapping[str, Any]) -> dict[str, tuple[float, str]]:
    """The figures a later run is compared on, each lower-is-better: name -> (value, unit)."""
    found: dict[str, tuple[float | None, str]] = {
        "migd mutating calls, 127 layouts from empty": (
            _get(results, "disruption", "tools", MIGD, "from_empty", "totals", "calls", "mutating"),
            "calls",
        ),
        "migd mutating calls, layout changes": (
            _get(
                results, "disruption", "tools", MIGD, "transitions", "totals", "calls", "mutating"
            ),
            "calls",
        ),
        "config saved -> reconcile started, p50": (
            _get(results, "reaction", "file_to_reconcile_started", "p50"),
            "s",
        ),
        "`migd reload` round trip, p50": (
            _get(results, "reaction", "reload_round_trip", "p50"),
            "s",
        ),
        "start -> READY, p50": (_get(results, "footprint", "start_to_ready", "migd", "p50"), "s"),
        "start -> READY vs bare pynvml": (
            _get(results, "footprint", "start_to_ready", "ratio_p50"),
            "x",
        ),
        "daemon RSS": (_get(results, "footprint", "memory_kib", "migd", "VmRSS"), "KiB"),
        "daemon RSS vs bare pynvml": (_get(results, "footprint", "memory_kib", "rss_ratio"), "x"),
        "/metrics idle, p50": (_get(results, "scrape", "idle", "p50"), "s"),
        "/metrics idle, p99": (_get(results, "scrape", "idle", "p99"), "s"),
        "/metrics during an apply, p50": (_get(results, "scrape", "during_apply", "p50"), "s"),
        "/metrics during an apply, p99": (_get(results, "scrape", "during_apply", "p99"), "s"),
        "planner from empty, p50": (_get(results, "planner", "from_empty", "planner", "p50"), "s"),
        "planner for a change, p50": (
            _get(results, "planner", "transition", "planner", "p50"),
            "s",
        ),
    }
    for scenario in (results.get("apply_time") or {}).get("scenarios", []):
        for tool in (MIGD_PAR, MIGD_SEQ):
            found[f"apply {scenario['name']}, {tool}"] = (
                _get(scenario, "tools", tool, "seconds"),
                "s",
            )
    o = results.get("oneshot")
    if o:
        for verb in oneshot_verbs(o):
            found[f"`migd {verb}` wall, p50"] = (_get(o, "rows", verb, "seconds", "p50"), "s")
            found[f"`migd {verb}` wall vs bare reader"] = (
                _get(o, "rows", verb, "vs_reader", "seconds_p50"),
                "x",
            )
            found[f"`migd {verb}` peak RSS vs bare reader"] = (
                _get(o, "rows", verb, "vs_reader", "peak_rss_p50"),
                "x",
            )
    return {k: (v, unit) for k, (v, unit) in found.items() if v is not None}


def _figure(value: float, unit: str) -> str:
    if unit == "s":
        return _ms(value)
    if unit == "x":
        return _x(value)
    if unit == "KiB":
        return f"{value / 1024:.1f} MiB"
    return f"{value:.0f}"


REGRESSION = 1.10  # a figure 10 % worse than the previous run's is flagged


def _against_previous(results: Mapping[str, Any], previous: Mapping[str, Any] | None) -> list[str]:
    out = ["## 9. Against the previous run", ""]
    if previous is None:
        out += [
            "No previous run's figures (`bench/results.json`) to compare with: this run's "
            "become the baseline of the next.",
            "",
        ]
        return out
    now, before = key_figures(results), key_figures(previous)
    out += [
        f"Each figure against the same figure of the run of {previous['meta']['started']} "
        f"(`{previous['meta']['command']}`), read from its JSON (`bench/results.json` before "
        "this run replaced it). All are "
        f"lower-is-better; a ratio above {_x(REGRESSION)} is marked as a regression. Absolute "
        "times move with the machine's load; the ratios to a baseline of the same run "
        "(marked ×) do much less.",
        "",
    ]
    rows = []
    for name, (value, unit) in now.items():
        if name not in before:
            continue
        old = before[name][0]
        change = _div(value, old)
        flag = " (regression)" if change is not None and change > REGRESSION else ""
        rows.append((name, _figure(value, unit), _figure(old, unit), _x(change) + flag))
    return out + _table(("figure", "this run", "previous run", "ratio"), rows)


def render(results: Mapping[str, Any], previous: Mapping[str, Any] | None = None) -> str:
    """The whole of BENCHMARKS.md."""
    out = [
        "# Benchmarks",
        "",
        "How much faster and gentler migd is than mig-parted, in numbers. Every GPU runs on "
        "migd's simulator (`migd/sim/`, a fake libnvidia-ml under pynvml): no figure here was "
        "measured on a GPU. Each figure comes with a baseline measured in the same run. This "
        "file is written by `python -m bench` — re-run it rather than editing; "
        "`python -m bench --quick` is the smoke version run by the tests.",
        "",
        *_meta(results["meta"]),
        "",
        "## Headline",
        "",
        *(f"- {line}" for line in headline(results)),
        "",
    ]
    sections = (
        ("disruption", _disruption),
        ("apply_time", _apply_time),
        ("reaction", _reaction),
        ("footprint", _footprint),
        ("scrape", _scrape),
        ("planner", _planner),
        ("oneshot", _oneshot),
        ("scope", _scope),
    )
    for key, fn in sections:
        if key in results:
            heading, blank, *body = fn(results[key])
            # The command that produced this section's figures alone.
            only = f"Command for this section alone: `python -m bench --only {key}`."
            out += [heading, blank, only, "", *body]
    if not results["meta"]["quick"] or previous is not None:
        out += _against_previous(results, previous)
    out += [
        "## How the figures are made",
        "",
        "- The simulated node's state file lives on tmpfs (`/dev/shm`) when there is one, so "
        "the simulator's fsyncs do not dominate: real hardware has no state file.",
        "- Sections 1, 2 and 6 run migd and the mig-parted model in the benchmark's own "
        "process (neither pays a process start); sections 3, 4 and 5 run `migd run` as its "
        "own process with a `NOTIFY_SOCKET` the benchmark reads, as systemd would.",
        "- Layouts are the 127 non-empty GPU-instance multisets an H200 can hold, enumerated by "
        "`tests/feasible.py` (the plain oracle the planner's tests check against); random "
        "changes are seeded pairs of them, so call counts are the same on every run.",
        "- Code: `bench/` (one module per section, `bench/migparted_model.py` for mig-parted).",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# What the mig-parted figures rest on
# ---------------------------------------------------------------------------


def _paired_ratio(model: list[int | None], migd: list[int | None]) -> float | None:
    """Model calls / migd calls over the scenarios both completed."""
    pairs = [(a, b) for a, b in zip(model, migd, strict=True) if a is not None and b is not None]
    return _div(sum(a for a, _ in pairs), sum(b for _, b in pairs))


def slot_order_ratios(so: Mapping[str, Any], walk: str) -> list[dict[str, Any]]:
    """Per combination of slot orders: the model's call ratio to migd for each tie order,
    their mean (Go's map order picks either with equal chance), scenarios not reached."""
    key = f"{walk}_calls"
    migd = so["migd"][key]
    rows = []
    for combo in so["combinations"]:
        ratios = {t: _paired_ratio(w[key], migd) for t, w in combo["tools"].items()}
        known = [r for r in ratios.values() if r is not None]
        rows.append(
            {
                "orders": combo["orders"],
                "ratios": ratios,
                "expected": sum(known) / len(known) if known else None,
                "not_reached": max(w[f"{walk}_not_reached"] for w in combo["tools"].values()),
            }
        )
    return rows


def slot_order_range(so: Mapping[str, Any], walk: str) -> str:
    rows = slot_order_ratios(so, walk)
    every = [r for row in rows for r in row["ratios"].values() if r is not None]
    expected = [row["expected"] for row in rows if row["expected"] is not None]
    return (
        f"{_x(min(every))}–{_x(max(every))} over the plausible slot orders of the unsourced "
        f"{' and '.join(so['synthesized'])} (expected over Go's map order "
        f"{_x(min(expected))}–{_x(max(expected))})"
    )


def _scope(s: Mapping[str, Any]) -> list[str]:
    so = s["slot_orders"]
    out = [
        "## 8. What the mig-parted figures rest on",
        "",
        "### Slot orders without a placement",
        "",
        "mig-parted creates every GPU instance without a placement, so the driver picks its "
        "slots, in an order observed on A100/H100 for some profiles only. On the "
        f"{so['model']} the order is sourced for {', '.join(so['sourced'])} (observed on "
        "A100/H100, the same chip) and trivial for "
        f"{', '.join(so['single_placement'])} (one placement); for "
        f"{' and '.join(so['synthesized'])} no source gives it: the simulator's model file "
        "lists both as synthesized (`migd/formats/gpu-models/`). Section 1's figures use the "
        "assumed orders; below, the mig-parted model is run again under every combination of "
        "plausible orders for those two (both walks of section 1, both tie orders). migd "
        "places every instance itself: no slot order changes its calls. Ratios are the "
        "model's mutating calls over migd's; a layout the model fails to reach (all "
        "orderings failed, the GPU left empty) still counts the calls it made, and a change "
        "whose starting layout it cannot make is left out for both. The expected value "
        "weighs both of Go's map orders equally.",
        "",
    ]
    out += _table(
        ("profile", "orders tried (starts, in order)"),
        [
            (name, "; ".join(f"{label}: {','.join(map(str, o))}" for label, o in opts.items()))
            for name, opts in so["plausible"].items()
        ],
    )
    for walk, title in (
        ("from_empty", f"All {len(so['migd']['from_empty_calls'])} layouts from an empty GPU"),
        ("transition", f"{len(so['migd']['transition_calls'])} layout changes"),
    ):
        rows = slot_order_ratios(so, walk)
        tools = list(rows[0]["ratios"]) if rows else []
        out += [f"**{title}** (mutating calls, mig-parted model / migd)", ""]
        out += _table(
            (*so["plausible"], *tools, "expected", "not reached by mig-parted"),
            [
                (
                    *(row["orders"][n] for n in so["plausible"]),
                    *(_x(row["ratios"][t]) for t in tools),
                    _x(row["expected"]),
                    row["not_reached"],
                )
                for row in rows
            ],
        )
    mc = s["mode_change"]
    t = mc["tools"]
    out += [
        f"### A MIG mode change on 1 of {mc['gpus']} GPUs",
        "",
        f"{mc['gpus']} simulated {mc['model']} (Ampere: a mode change waits for a GPU reset); "
        f"GPUs 0-{mc['changed_gpu'] - 1} hold {mc['layout']}, GPU {mc['changed_gpu']} has MIG "
        "off; the new config turns it on with the same layout. mig-parted's mode step clears "
        "and sets the mode on every GPU and resets them all when one is pending, then lays "
        "out every GPU again; each tool starts from the layout as it placed it itself.",
        "",
    ]
    out += _table(
        (
            "tool",
            "mutating calls",
            "failed",
            "SetMigMode calls",
            "GPUs reset",
            "other GPUs touched",
            "their GPU instances destroyed",
        ),
        [
            (
                name,
                r["mutating"],
                r["failed"],
                r["mode_sets"],
                r["gpus_reset"],
                f"{r['other_gpus_touched']} of {mc['gpus'] - 1}",
                f"{r['other_gis_destroyed']} of {r['other_gis_before']}",
            )
            for name, r in t.items()
        ],
    )
    sv = s["services"]
    out += [
        "### The node around a change",
        "",
        "Per change on "
        f"{sv['gpus']} {sv['model']}s. mig-parted: one run of its unit "
        "(`deployments/systemd/service.sh`: generate-config, assert --mode-only, for a mode "
        "change apply --mode-only --skip-reset and apply --mode-only, then apply and export; "
        "each a process initialising NVML) with the pre-Hopper hooks file the package "
        "installs (`hooks-default.yaml` running `hooks.sh`: pre-apply-mode stops "
        "dcgm-exporter, kubelet, nvidia-dcgm and nvsm, pre-apply-config dcgm-exporter and "
        "kubelet, both kill the device-plugin, GPU-feature-discovery and DCGM-exporter "
        "containers; apply-exit starts those services, after every apply). migd: the "
        "running daemon applies the change (no process started; NVML initialisations "
        "counted by the simulator for one apply); its hooks are those its plan calls for "
        "(`migd.node.change`): none for a node already right, pre-apply-mode only for a mode "
        "change; run with the same hooks file, they stop what that file stops. Without "
        "hooks, its GPU client units (`settings.gpu-clients`) are stopped only for a mode "
        "change or a destroy.",
        "",
    ]
    rows = []
    for sc in sv["scenarios"]:
        m, p = sc["migd"], sc["mig-parted"]
        rows.append(
            (
                sc["name"],
                f"{p['processes']} / {p['nvml_inits']}",
                f"{m['processes']} / {m['nvml_inits']}",
                f"{len(p['hooks'])} / {len(m['hooks'])}",
                f"{p['unit_stops']} / {m['unit_stops']}",
                f"{p['kubelet_stops']} / {m['kubelet_stops']}",
                f"{p['pod_kill_rounds']} / {m['pod_kill_rounds']}",
                f"{p['unit_starts']} / {m['unit_starts']}",
                "yes" if m["stops_clients"] else "no",
            )
        )
    out += _table(
        (
            "change",
            "mig-parted: processes / NVML inits",
            "migd: processes / NVML inits",
            "hook runs (mig-parted / migd)",
            "units stopped",
            "kubelet stopped",
            "container-kill rounds",
            "unit starts",
            "migd stops its GPU client units",
        ),
        rows,
    )
    return out
