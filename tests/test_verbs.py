"""The geometry verbs as an operator runs them: plan, apply, assert, export,
generate-config, checkpoint, restore — on simulated nodes.

Most run ``migd.cli.main`` in-process (the same parsing and handlers as the command);
the ones that matter end to end run the ``migd`` command itself.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import yaml
from clean_env import clean_environ
from geometry_support import (
    A100,
    H200,
    add_process,
    apply_config,
    config_text,
    geometry,
    gi_ids,
    make_node,
    mutating_calls,
    power_cycled,
    read_node,
    restart_from,
    run_migd,
    scratch_dir,
    snapshot,
    stats,
)
from paths import REPO, anchor, installed_config
from process_support import end, ended, finishes_within

from migd.cli import main
from migd.commands.common import simulated_reset_command
from migd.core.compare import mismatches
from migd.core.config import Config
from migd.core.selection import desired_layouts
from migd.errors import InvalidRequest
from migd.formats.config_file import parse_config
from migd.formats.export import export_config, render
from migd.formats.gpu_models import load_model, model_names
from migd.gpu.executor import format_result
from migd.gpu.nvml import NvmlAdapter


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    with scratch_dir(tmp_path) as path:
        yield path


def migd(capsys: pytest.CaptureFixture[str], state: Path, *args: str) -> tuple[int, str, str]:
    """``migd --simulate STATE ARGS…`` in-process: (exit code, stdout, stderr)."""
    code = _main(["--simulate", str(state), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _main(argv: list[str]) -> int:
    """``migd.cli.main``, leaving the ``migd`` logger as it found it: main() points it at
    the current stderr, which here is a capture that ends with the test."""
    logger = logging.getLogger("migd")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        return main(argv)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def write(scratch: Path, text: str, name: str = "config.yaml") -> Path:
    path = scratch / name
    path.write_text(text)
    return path


# --- every shipped config on every model that has its profiles ------------------------

MIG_MODELS = sorted({load_model(n).key for n in model_names() if load_model(n).mig_capable})

ConfigCase = tuple[str, Config, str]  # (file name, parsed config, config name)


def config_cases(paths: Iterable[Path], only_all: bool = False) -> list[ConfigCase]:
    """Every config of these files (only the all-* ones when ``only_all``), each file
    parsed once. Parsed, not loaded: who owns the checkout's files is not the point."""
    cases = []
    for path in paths:
        config = parse_config(path.read_bytes(), path.name)
        cases += [
            (path.name, config, n) for n in config.names if n.startswith("all-") or not only_all
        ]
    return cases


def apply_each(scratch: Path, model: str, cases: list[ConfigCase]) -> list[str]:
    """apply → assert passes → export says the same layout, on two GPUs of ``model``, for
    every config of ``cases`` the model can hold (a config naming a profile the model
    lacks is refused by resolution); the names of the configs applied."""
    state = make_node(scratch / "s.json", [model, model], clients=False)
    fresh = read_node(state)
    blank = snapshot()
    applied = []
    for file, config, name in cases:
        try:
            desired = desired_layouts(blank, config.entries(name))
        except InvalidRequest:
            continue  # the model lacks a profile this config names
        if not desired:
            continue  # the config's device filters leave this model out
        restart_from(state, fresh)
        with NvmlAdapter.open() as nvml:
            result = apply_config(nvml, config, name)
            assert result.exit_code == 0, (file, name, format_result(result))
            after = nvml.snapshot()
        want = desired_layouts(after, config.entries(name))
        assert mismatches(after, want) == (), (file, name)
        exported = parse_config(render(export_config(after, "now"), "yaml").encode(), "export")
        got = desired_layouts(after, exported.entries("now"))
        assert [(d.index, d.mig_enabled, d.instances) for d in got] == [
            (d.index, d.mig_enabled, d.instances) for d in want
        ], (file, name)
        applied.append(name)
    return applied


@pytest.mark.parametrize("model", MIG_MODELS)
def test_every_shipped_config_applies_asserts_and_exports_on_each_model(
    scratch: Path, model: str
) -> None:
    applied = apply_each(scratch, model, config_cases(sorted((REPO / "configs").glob("*.yaml"))))
    assert "all-balanced" in applied, applied


@pytest.mark.parametrize("model", MIG_MODELS)
def test_mig_parted_all_configs_apply_assert_and_export_on_each_model(
    scratch: Path, model: str
) -> None:
    """The all-* configs of mig-parted's own files, read unchanged."""
    files = [anchor("config.yaml"), anchor("config-default.yaml")]
    applied = apply_each(scratch, model, config_cases(files, only_all=True))
    assert "all-balanced" in applied, applied


# --- the demo, end to end -------------------------------------------------------------


def test_demo_config_on_a_fresh_8xh200_node_then_nothing_to_do(scratch: Path) -> None:
    state = scratch / "node.json"
    assert run_migd("sim", "init", str(state), "--gpu", "H200x8").returncode == 0
    demo = str(installed_config("demo.yaml", scratch))
    first = run_migd("--simulate", str(state), "apply", "-f", demo)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("applied 1g.18gb×2+2g.35gb+3g.71gb") == 8
    node = geometry(read_node(state))
    assert len(set(node.values())) == 1  # every GPU alike:
    mode, _, instances = node[0]
    assert mode == 1 and sorted((p, start, size) for p, start, size, _ in instances) == [
        (9, 4, 4),  # 3g.71gb
        (14, 0, 2),  # 2g.35gb
        (19, 2, 1),  # 1g.18gb
        (19, 3, 1),
    ]
    calls = mutating_calls(stats(state))
    assert calls == 8 * 9  # per GPU: the mode, 4 GIs, 4 CIs
    second = run_migd("--simulate", str(state), "apply", "-f", demo)
    assert second.returncode == 0
    assert second.stdout.count("nothing to do") == 8
    assert mutating_calls(stats(state)) == calls
    assert geometry(read_node(state)) == node


def test_unknown_profile_exits_2_and_touches_no_gpu(scratch: Path) -> None:
    state = scratch / "node.json"
    run_migd("sim", "init", str(state), "--gpu", "H200x2")
    good = write(scratch, config_text({"demo": "1g.18gb=2,2g.35gb=1,3g.71gb=1"}), "good.yaml")
    assert run_migd("--simulate", str(state), "apply", "-f", str(good)).returncode == 0
    # GPU 0 would be fine; GPU 1 asks a profile an H200 does not have.
    bad = write(
        scratch,
        "version: v1\nmig-configs:\n  next:\n"
        "    - devices: [0]\n      mig-enabled: true\n      mig-devices: {1g.18gb: 7}\n"
        "    - devices: [1]\n      mig-enabled: true\n      mig-devices: {1g.5gb: 7}\n",
        "bad.yaml",
    )
    before = run_migd("sim", "show", str(state), "--json").stdout
    calls = mutating_calls(json.loads(run_migd("sim", "stats", str(state), "--json").stdout))
    result = run_migd("--simulate", str(state), "apply", "-f", str(bad))
    assert result.returncode == 2
    assert "1g.5gb" in result.stderr and "GPU 1" in result.stderr
    assert "1g.18gb" in result.stderr  # the valid choices are named
    assert run_migd("sim", "show", str(state), "--json").stdout == before
    assert (
        mutating_calls(json.loads(run_migd("sim", "stats", str(state), "--json").stdout)) == calls
    )


def test_ampere_reset_goes_through_the_simulated_reset_command(scratch: Path) -> None:
    state = scratch / "node.json"
    run_migd("sim", "init", str(state), "--gpu", "A100-SXM4-40GB", "--gpu", "H200")
    cfg = write(scratch, config_text({"on": "3g=2"}))
    result = run_migd("--simulate", str(state), "apply", "-f", str(cfg))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resetting GPU 0 to activate" in result.stdout
    assert "GPU 0: applied 3g.20gb×2 (5 NVML changes, after a GPU reset)" in result.stdout
    assert "GPU 1: applied 3g.71gb×2 (5 NVML changes)" in result.stdout


def _apply_with_reset(
    capsys: pytest.CaptureFixture[str], scratch: Path, reset_command: list[str], timeout: str
) -> tuple[int, str]:
    """``migd apply`` in-process on an A100 (whose mode change needs a reset) and an H200,
    without --simulate: the config's own reset command runs, as on a real node."""
    make_node(scratch / "node.json", [A100, H200])  # pynvml now talks to this node
    settings = {"reset-command": reset_command, "reset-timeout": timeout}
    cfg = write(scratch, config_text({"on": "3g=2"}, settings=settings))
    code = finishes_within(20, lambda: _main(["apply", "-f", str(cfg)]), "migd apply")
    return code, capsys.readouterr().out


def test_apply_kills_a_hanging_reset_command_at_its_timeout_and_goes_on(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pidfile = scratch / "child.pid"
    hang = ["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait", "reset", "{bus_ids}"]
    code, out = _apply_with_reset(capsys, scratch, hang, "1s")
    assert ended(int(pidfile.read_text())), "the reset command's child outlived it"
    assert code == 4, out
    assert (
        "GPU 0: REBOOT REQUIRED: the MIG mode change is pending and the GPU could not be reset "
        "(/bin/sh did not finish within 1 s and was killed)"
    ) in out
    assert "GPU 1: applied 3g.71gb×2" in out  # the other GPU is not held back
    a100 = read_node(scratch / "node.json").gpus[0]
    assert (a100.mig_current, a100.mig_pending, a100.gpu_instances) == (0, 1, ())


def test_apply_is_not_held_by_a_child_the_reset_command_leaves_on_its_output(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pidfile = scratch / "child.pid"
    # The simulated reset, run by a shell that leaves a child holding its output for 60 s.
    reset = simulated_reset_command(str(scratch / "node.json"))
    leaves = ["/bin/sh", "-c", f'sleep 60 & echo $! > {pidfile}; exec "$@"', "sh", *reset]
    try:
        code, out = _apply_with_reset(capsys, scratch, leaves, "60s")
        assert code == 0, out
        assert "GPU 0: applied 3g.20gb×2 (5 NVML changes, after a GPU reset)" in out
    finally:
        end(int(pidfile.read_text()))


def test_passthrough_gpu_exits_4_with_the_reason(scratch: Path) -> None:
    state = scratch / "node.json"
    run_migd("sim", "init", str(state), "--gpu", "A100-SXM4-40GB", "--passthrough")
    cfg = write(scratch, config_text({"on": "7g.40gb=1"}))
    for _ in range(2):
        result = run_migd("--simulate", str(state), "apply", "-f", str(cfg))
        assert result.returncode == 4
        assert "REBOOT REQUIRED" in result.stdout and "passthrough" in result.stdout


# --- plan, assert, blocked -------------------------------------------------------------


def test_plan_shows_the_steps_and_changes_nothing(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_node(scratch / "s.json", [H200, H200])
    cfg = write(scratch, config_text({"demo": "1g.18gb=2,2g.35gb=1,3g.71gb=1"}))
    code, out, _ = migd(capsys, state, "plan", "-f", str(cfg))
    assert code == 0
    assert "set MIG mode on" in out and "create   3g.71gb at 4:4" in out
    code, out, _ = migd(capsys, state, "plan", "-f", str(cfg), "--json")
    doc = json.loads(out)
    assert doc["config"] == "demo"
    assert [g["gpu"] for g in doc["gpus"]] == [0, 1]
    assert len(doc["gpus"][0]["create"]) == 4
    assert mutating_calls(stats(state)) == 0


def test_blocked_gpu_exits_3_and_stays_as_it_was(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_node(scratch / "s.json", [H200, H200])
    cfg = write(
        scratch, config_text({"demo": "1g.18gb=2,2g.35gb=1,3g.71gb=1", "small": "1g.18gb=7"})
    )
    assert migd(capsys, state, "apply", "-f", str(cfg), "-c", "demo")[0] == 0
    add_process(state, 777, gpu=1, gi=gi_ids(read_node(state), 1)[(9, 4, 4)], ci=0)
    before = geometry(read_node(state))
    code, out, _ = migd(capsys, state, "plan", "-f", str(cfg), "-c", "small")
    assert code == 3 and "BLOCKED" in out and "777" in out
    code, out, _ = migd(capsys, state, "apply", "-f", str(cfg), "-c", "small")
    assert code == 3
    assert "GPU 1: BLOCKED, unchanged" in out and "777" in out
    assert geometry(read_node(state))[1] == before[1]
    assert geometry(read_node(state))[0] != before[0]


def test_assert_judges_only_covered_gpus_and_lists_differences(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_node(scratch / "s.json", [H200, H200])
    first = write(
        scratch,
        "version: v1\nmig-configs:\n  first:\n"
        "    - devices: [0]\n      mig-enabled: true\n"
        "      mig-devices: {1c.1g.18gb: 7, 3g.71gb: 0}\n",
        "first.yaml",
    )
    assert migd(capsys, state, "assert", "-f", str(first))[0] == 1
    assert migd(capsys, state, "apply", "-f", str(first))[0] == 0
    # GPU 1 is not covered (still MIG off) and not judged; 1c.1g.18gb is 1g.18gb.
    code, out, _ = migd(capsys, state, "assert", "-f", str(first))
    assert code == 0, out
    other = write(scratch, config_text({"x": "7g.141gb=1"}), "other.yaml")
    code, out, _ = migd(capsys, state, "assert", "-f", str(other))
    assert code == 1
    assert "GPU 0: holds 1g.18gb×7, wanted 7g.141gb" in out
    assert "GPU 1: holds MIG disabled, wanted 7g.141gb" in out
    assert migd(capsys, state, "assert", "-f", str(other), "-a")[0] == 0
    bad = write(scratch, config_text({"x": "1g.5gb=1"}), "bad.yaml")
    assert migd(capsys, state, "assert", "-f", str(bad), "-a")[0] == 2
    assert migd(capsys, state, "assert", "-f", str(first), "-m")[0] == 0


def test_config_from_stdin_and_env_selection(scratch: Path) -> None:
    state = scratch / "node.json"
    run_migd("sim", "init", str(state), "--gpu", "H200")
    text = config_text({"a": "7g.141gb=1", "b": "1g.18gb=7"})
    result = run_migd("--simulate", str(state), "apply", "-f", "-", "-c", "b", stdin=text)
    assert result.returncode == 0 and "applied 1g.18gb×7" in result.stdout
    # No selection in a file with two configs: invalid input, nothing touched.
    result = run_migd("--simulate", str(state), "apply", "-f", "-", stdin=text)
    assert result.returncode == 2 and "no mig-config selected" in result.stderr


# --- export, generate-config -------------------------------------------------------------


def test_export_and_generate_config_round_trip(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_node(scratch / "s.json", [H200, H200, A100], clients=False)
    code, out, _ = migd(capsys, state, "generate-config", "-o", "json")
    generated = json.loads(out)
    assert {"all-disabled", "all-enabled", "all-balanced", "all-1g.18gb.me", "all-1g.5gb"} <= set(
        generated["mig-configs"]
    )
    assert generated["mig-configs"]["all-1g.5gb"][0]["device-filter"] == ["0x20B010DE"]
    path = write(scratch, yaml.safe_dump(generated), "generated.yaml")
    assert migd(capsys, state, "apply", "-f", str(path), "-c", "all-balanced")[0] == 0
    code, out, _ = migd(capsys, state, "export")
    assert yaml.safe_load(out) == {
        "version": "v1",
        "mig-configs": {
            "current": [
                {
                    "device-filter": "0x233510DE",
                    "devices": "all",
                    "mig-enabled": True,
                    "mig-devices": {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1},
                },
                {
                    "device-filter": "0x20B010DE",
                    "devices": "all",
                    "mig-enabled": True,
                    "mig-devices": {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1},
                },
            ]
        },
    }
    code, out, _ = migd(capsys, state, "export", "-o", "json", "-l", "saved")
    assert code == 0 and list(json.loads(out)["mig-configs"]) == ["saved"]


# --- checkpoint, restore ------------------------------------------------------------------


def test_checkpoint_restore_round_trip(scratch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = make_node(scratch / "s.json", [H200, H200])
    cfg = write(
        scratch,
        config_text({"mixed": "1c.3g.71gb=2,3g.71gb=1", "flat": "1g.18gb=7"}),
    )
    assert migd(capsys, state, "apply", "-f", str(cfg), "-c", "mixed")[0] == 0
    saved = read_node(state)
    file = scratch / "cp.json"
    code, out, _ = migd(capsys, state, "checkpoint", "-f", str(file))
    assert code == 0
    doc = json.loads(file.read_text())
    assert doc["version"] == "v1" and len(doc["gpus"]) == 2
    assert migd(capsys, state, "apply", "-f", str(cfg), "-c", "flat")[0] == 0
    assert geometry(read_node(state)) != geometry(saved)
    code, out, _ = migd(capsys, state, "restore", "-f", str(file))
    assert code == 0, out
    assert geometry(read_node(state)) == geometry(saved)
    code, out, _ = migd(capsys, state, "restore", "-f", str(file))
    assert code == 0 and out.count("nothing to do") == 2
    # A file of another version is refused before anything is touched.
    doc["version"] = "v9"
    file.write_text(json.dumps(doc))
    code, _, err = migd(capsys, state, "restore", "-f", str(file))
    assert code == 2 and "v9" in err


def test_restore_after_the_node_lost_its_instances(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_node(scratch / "s.json", [H200])
    cfg = write(scratch, config_text({"x": "1g.35gb=2,2g.35gb=1,1g.18gb+me=1"}))
    assert migd(capsys, state, "apply", "-f", str(cfg))[0] == 0
    saved = read_node(state)
    file = scratch / "cp.json"
    assert migd(capsys, state, "checkpoint", "-f", str(file))[0] == 0
    # A reboot: instances and mode are gone (a Hopper GPU forgets its MIG mode too).
    restart_from(state, power_cycled(saved))
    code, out, _ = migd(capsys, state, "restore", "-f", str(file))
    assert code == 0, out
    assert geometry(read_node(state)) == geometry(saved)


# --- every verb teaches --------------------------------------------------------------------


@pytest.mark.parametrize(
    "verb", ["plan", "apply", "assert", "export", "generate-config", "checkpoint", "restore"]
)
def test_every_verb_help_has_a_description_and_an_example(
    verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        _main([verb, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"migd {verb}" in out
    assert "exit codes:" in out
    assert len(out.split("\n\n")[1]) > 80  # a description, not just a usage line


def test_a_reader_that_goes_away_ends_a_verb_quietly(tmp_path: Path) -> None:
    """`migd sim show STATE | head -1`: no traceback when the pipe closes early."""
    state = tmp_path / "node.json"
    init = [sys.executable, "-m", "migd", "sim", "init", str(state), "--gpu", "H200x8"]
    subprocess.run(init, check=True, capture_output=True, timeout=60, env=clean_environ())
    show = subprocess.Popen(
        [sys.executable, "-m", "migd", "sim", "show", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_environ(),
    )
    assert show.stdout is not None and show.stderr is not None
    show.stdout.close()  # before the verb writes a line
    _, err = show.communicate(timeout=60)
    assert show.returncode == 1
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_the_parser_built_for_one_verb_is_the_one_its_module_registers() -> None:
    # main() builds only the named verb's parsers: the table must list what each
    # module registers, or a verb would be routed to the wrong module (or none).
    import argparse
    import importlib

    from migd.cli import VERB_MODULES

    for module, verbs in VERB_MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        assert tuple(sub.choices) == verbs
