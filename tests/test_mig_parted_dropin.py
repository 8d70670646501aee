"""migd installed as ``nvidia-mig-parted``, called the way mig-parted's callers call it.

Each sequence is transcribed from its caller's source (commit noted) and run with the
``nvidia-mig-parted`` command migd installs, against simulated nodes:

- mig-parted's ``deployments/systemd/service.sh`` (NVIDIA/mig-parted bd7160f4), the
  script ``nvidia-mig-manager.service`` runs at boot: replayed here step by step; the
  unchanged script itself runs in :func:`test_mig_parteds_own_service_sh_runs_unchanged`
  when ``MIGD_TEST_MIG_PARTED_SERVICE_SH`` names a copy of it;
- DeepOps' ``playbooks/nvidia-software/nvidia-mig.yml`` (NVIDIA/deepops 3957a42f);
- the GPU Operator's k8s-mig-manager, ``pkg/mig/reconfigure/reconfigure.go``
  (NVIDIA/mig-parted bd7160f4).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml
from ci_policy import skip_allowed_in_ci
from clean_env import clean_environ
from geometry_support import (
    A100,
    H200,
    add_process,
    make_node,
    mutating_calls,
    scratch_dir,
    snapshot,
    stats,
)
from paths import anchor

from migd.commands.mig_parted import normalize_argv, program_name
from migd.core.parted_checkpoint import PartedCheckpoint
from migd.formats import checkpoint_file

# What ``pip install`` puts beside this Python: the name every caller uses.
NVIDIA_MIG_PARTED = Path(sys.executable).parent / "nvidia-mig-parted"
SERVICE_SH_VARIABLE = "MIGD_TEST_MIG_PARTED_SERVICE_SH"


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    with scratch_dir(tmp_path) as path:
        yield path


def mig_parted_env(state: Path, **extra: str) -> dict[str, str]:
    """A caller's environment: the simulated node, and only the MIG_PARTED_* it sets."""
    env = {k: v for k, v in clean_environ().items() if not k.startswith("MIG_PARTED_")}
    env["MIGD_SIMULATE"] = str(state)
    env.update(extra)
    return env


def nvidia_mig_parted(
    env: Mapping[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    assert NVIDIA_MIG_PARTED.is_file(), f"{NVIDIA_MIG_PARTED} is not installed with migd"
    return subprocess.run(
        [str(NVIDIA_MIG_PARTED), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def recording_hooks(directory: Path) -> tuple[Path, Path]:
    """A hooks file whose every stage appends its name to a log; (hooks file, log)."""
    log = directory / "hooks.log"
    stages = ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit")
    hooks = {
        stage: [{"command": "/bin/sh", "args": ["-c", f'echo {stage} >> "$LOG"'], "envs": {}}]
        for stage in stages
    }
    for stage in stages:
        hooks[stage][0]["envs"] = {"LOG": str(log)}
    path = directory / "hooks.yaml"
    path.write_text(yaml.safe_dump({"version": "v1", "hooks": hooks}))
    return path, log


def balanced(model: str) -> dict[str, int]:
    """all-balanced as mig-parted's generate-config makes it for ``model``."""
    return {
        A100: {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1},
        H200: {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1},
    }[model]


def held(index: int) -> dict[str, int]:
    """The profiles GPU ``index`` of the simulated node holds, by name."""
    gpu = snapshot().gpu(index)
    counts: dict[str, int] = {}
    for gi in gpu.instances:
        profile = gpu.profile_by_id(gi.profile_id)
        assert profile is not None
        counts[profile.name] = counts.get(profile.name, 0) + 1
    return counts


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-d", "apply", "-m"], ["-d", "apply", "-m"]),
        (["apply", "-d", "--mode-only"], ["--debug", "apply", "--mode-only"]),
        (["assert", "-f", "c.yaml", "--debug"], ["--debug", "assert", "-f", "c.yaml"]),
        (["--simulate", "s.json", "apply", "-d"], ["--debug", "--simulate", "s.json", "apply"]),
        (["help"], ["--help"]),
        (["h", "apply"], ["apply", "--help"]),
        (["--simulate", "s", "help", "restore"], ["--simulate", "s", "restore", "--help"]),
        # Only mig-parted's verbs inherit its global flags; after "--" nothing is moved.
        (["sim", "show", "-d"], ["sim", "show", "-d"]),
        (["apply", "--", "-d"], ["apply", "--", "-d"]),
        ([], []),
    ],
)
def test_mig_parteds_spellings_become_migds(argv: list[str], expected: list[str]) -> None:
    assert normalize_argv(argv) == expected


def test_called_as_nvidia_mig_parted_it_says_so() -> None:
    assert program_name("/usr/bin/nvidia-mig-parted") == "nvidia-mig-parted"
    assert program_name("/usr/bin/migd") == "migd"


def test_the_nvidia_mig_parted_command_answers_as_mig_parteds_cli(scratch: Path) -> None:
    state = make_node(scratch / "node.json", [A100])
    config = scratch / "config.yaml"
    config.write_text(
        "version: v1\nmig-configs:\n  one:\n  - devices: all\n    mig-enabled: true\n"
        "    mig-devices: {1g.5gb: 7}\n  two:\n  - devices: all\n    mig-enabled: false\n"
    )
    env = mig_parted_env(state)
    version = nvidia_mig_parted(env, "-v")
    assert version.returncode == 0 and version.stdout.startswith("migd ")
    for words in (["help"], ["h"]):
        shown = nvidia_mig_parted(env, *words)
        assert shown.returncode == 0 and shown.stdout.startswith("usage: nvidia-mig-parted ")
    shown = nvidia_mig_parted(env, "help", "apply")
    assert shown.returncode == 0 and "--skip-reset" in shown.stdout
    # -d after the verb, or MIG_PARTED_DEBUG: debug lines on stderr.
    for debug_env, args, debug in (
        ({}, ["apply"], False),
        ({}, ["apply", "-d"], True),
        ({"MIG_PARTED_DEBUG": "true"}, ["apply"], True),
    ):
        run = nvidia_mig_parted({**env, **debug_env}, *args, "-f", str(config), "-c", "two")
        assert run.returncode == 0, run.stderr
        assert ("DEBUG" in run.stderr) is debug, run.stderr
    # MIG_PARTED_VALID_CONFIG=true: only the config is judged (the GPUs do not hold it).
    valid = {**env, "MIG_PARTED_VALID_CONFIG": "true"}
    run = nvidia_mig_parted(valid, "assert", "-f", str(config), "-c", "one")
    assert run.returncode == 0 and "is valid" in run.stdout, run.stdout + run.stderr
    run = nvidia_mig_parted(valid, "assert", "-f", str(config), "-c", "three")
    assert run.returncode != 0 and "three" in run.stderr


def test_tab_indented_json_from_jq_is_read(scratch: Path) -> None:
    """A config as ``jq`` writes it (tabs), as mig-parted reads it; errors keep their place."""
    state = make_node(scratch / "node.json", [A100])
    doc = {
        "version": "v1",
        "mig-configs": {"all-1g": [{"devices": "all", "mig-enabled": True, "mig-devices": {}}]},
    }
    doc["mig-configs"]["all-1g"][0]["mig-devices"] = {"1g.5gb": 7}
    config = scratch / "config.json"
    config.write_text(json.dumps(doc, indent="\t"))
    env = mig_parted_env(state)
    run = nvidia_mig_parted(env, "apply", "-f", str(config), "-c", "all-1g")
    assert run.returncode == 0, run.stdout + run.stderr
    assert held(0) == {"1g.5gb": 7}
    config.write_text(json.dumps(doc, indent="\t").replace("1g.5gb", "1g.5gbb"))
    run = nvidia_mig_parted(env, "assert", "-f", str(config), "-c", "all-1g")
    assert run.returncode == 2
    assert f'{config}:9:6: mig-configs.all-1g[0].mig-devices."1g.5gbb"' in run.stderr


# ---------------------------------------------------------------------------
# service.sh, replayed
# ---------------------------------------------------------------------------


def service_sh_sequence(directory: Path, env: dict[str, str]) -> list[tuple[list[str], int]]:
    """The ``nvidia-mig-parted`` calls of service.sh (bd7160f4) with what each answered.

    The shell steps between them (the hooks-file symlink, reset capability, reboot state,
    the kernel-module check) are the script's own and run unchanged in the test below.
    """
    config = directory / "config.yaml"
    calls: list[tuple[list[str], int]] = []

    def call(*args: str) -> int:
        run = nvidia_mig_parted(env, *args)
        calls.append((list(args), run.returncode))
        return run.returncode

    # if nvidia-mig-parted generate-config -f "${CONFIG_FILE}.tmp"; then … > "${CONFIG_FILE}"
    assert call("generate-config", "-f", f"{config}.tmp") == 0
    generated = Path(f"{config}.tmp").read_text()
    config.write_text(f"# DO NOT EDIT: Auto-generated from hardware on every boot.\n\n{generated}")
    Path(f"{config}.tmp").unlink()
    env.setdefault("MIG_PARTED_CONFIG_FILE", str(config))
    env.setdefault("MIG_PARTED_HOOKS_FILE", str(directory / "hooks.yaml"))
    if call("assert", "--mode-only") != 0:
        if call("apply", "--mode-only", "--skip-reset") != 0:
            return calls  # "Error applying MIG mode"; exit 1
        if call("apply", "--mode-only") != 0:
            return calls  # "Error issuing GPU reset"; exit 1
    if call("apply") != 0:
        return calls  # "Error applying MIG config"; exit 1
    call("export")
    return calls


@pytest.mark.parametrize(("model", "clients"), [(A100, True), (H200, False)])
def test_service_sh_sequence_applies_the_layout(scratch: Path, model: str, clients: bool) -> None:
    """A100×2 held by system clients (mode changes wait for a reset) and H200×2."""
    state = make_node(scratch / "node.json", [model, model], clients=clients)
    _, log = recording_hooks(scratch)
    env = mig_parted_env(state, MIG_PARTED_SELECTED_CONFIG="all-balanced")
    calls = service_sh_sequence(scratch, env)
    assert calls == [
        (["generate-config", "-f", f"{scratch / 'config.yaml'}.tmp"], 0),
        (["assert", "--mode-only"], 1),
        (["apply", "--mode-only", "--skip-reset"], 0),
        (["apply", "--mode-only"], 0),
        (["apply"], 0),
        (["export"], 0),
    ]
    assert held(0) == held(1) == balanced(model)
    # mig-parted runs apply-start and apply-exit on every apply, changed or not.
    assert log.read_text().split().count("apply-start") == 3
    assert log.read_text().split().count("apply-exit") == 3
    # Booting again on a node that holds its layout: every step passes, nothing changes.
    again = service_sh_sequence(scratch, env)
    assert [code for _, code in again] == [0, 0, 0, 0]


def test_skip_reset_says_the_change_is_pending_and_plain_apply_keeps_exit_4(
    scratch: Path,
) -> None:
    state = make_node(scratch / "node.json", [A100, A100])
    config = scratch / "config.yaml"
    config.write_text(
        "version: v1\nmig-configs:\n  on:\n  - devices: all\n    mig-enabled: true\n"
        "    mig-devices: {1g.5gb: 7}\n"
    )
    env = mig_parted_env(state, MIG_PARTED_CONFIG_FILE=str(config))
    run = nvidia_mig_parted({**env, "MIG_PARTED_SKIP_RESET": "true"}, "apply", "-m")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "MIG mode change pending on GPU(s) 0, 1: the GPU reset was skipped as asked" in (
        run.stdout
    )
    assert snapshot().gpu(0).mig_pending and not snapshot().gpu(0).mig_enabled
    # With instances still to create after the reset, the layout is not reached: exit 4.
    assert nvidia_mig_parted(env, "apply", "-s").returncode == 4
    # A plain apply that cannot reset (a process holds GPU 1) keeps exit 4 too.
    add_process(state, 4242, 1, None)
    assert nvidia_mig_parted(env, "apply", "-m").returncode == 4


# ---------------------------------------------------------------------------
# service.sh, the script itself
# ---------------------------------------------------------------------------


def _stub(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def _service_sh() -> Path:
    given = os.environ.get(SERVICE_SH_VARIABLE)
    if not given:
        skip_allowed_in_ci(
            f"{SERVICE_SH_VARIABLE} does not name a copy of mig-parted's "
            "deployments/systemd/service.sh (with its utils.sh beside it); the project "
            "does not carry that script"
        )
    path = Path(given)
    if not (path.is_file() and (path.parent / "utils.sh").is_file()):
        pytest.fail(f"{SERVICE_SH_VARIABLE}={given}: no service.sh with utils.sh beside it")
    for own in ("/etc/nvidia-mig-manager", "/var/lib/nvidia-mig-manager"):
        if Path(own).exists():
            skip_allowed_in_ci(f"{own} exists: nvidia-mig-manager is installed here")
    return path


@pytest.mark.parametrize(("model", "clients"), [(A100, True), (H200, False)])
def test_mig_parteds_own_service_sh_runs_unchanged(
    scratch: Path, model: str, clients: bool
) -> None:
    """service.sh and utils.sh as shipped, run as nvidia-mig-manager.service runs them."""
    source = _service_sh()
    unit = anchor("nvidia-mig-manager.service").read_text()
    override = anchor("override.conf").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start == "ExecStart=/bin/bash /etc/nvidia-mig-manager/service.sh"
    assert 'Environment="MIG_PARTED_SELECTED_CONFIG=all-disabled"' in override
    etc = scratch / "etc-nvidia-mig-manager"
    etc.mkdir()
    for name in ("service.sh", "utils.sh"):
        shutil.copy(source.parent / name, etc / name)
    recording_hooks(etc)
    state = make_node(scratch / "node.json", [model, model], clients=clients)
    bin_dir = scratch / "bin"
    bin_dir.mkdir()
    # Stubs only for what this machine lacks: the nvidia kernel module (service.sh reads
    # /proc/modules through cat), and a reboot that must never happen here.
    modules = Path("/proc/modules")
    loaded = modules.is_file() and any(
        line.startswith("nvidia ") for line in modules.read_text().splitlines()
    )
    if not loaded:
        real_cat = shutil.which("cat")
        _stub(
            bin_dir,
            "cat",
            f'if [ "$*" = /proc/modules ]; then {real_cat} /proc/modules 2>/dev/null; '
            f'echo "nvidia 1 0 - Live 0x0"; else exec {real_cat} "$@"; fi',
        )
    _stub(bin_dir, "reboot", "echo 'reboot stubbed: the test machine is not rebooted' >&2; exit 1")
    path = f"{bin_dir}:{NVIDIA_MIG_PARTED.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    for selected, layout in (("all-disabled", {}), ("all-balanced", balanced(model))):
        env = mig_parted_env(state, PATH=path, MIG_PARTED_SELECTED_CONFIG=selected)
        run = subprocess.run(
            ["/bin/bash", str(etc / "service.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert held(0) == held(1) == layout
        assert snapshot().gpu(0).mig_enabled is bool(layout)


# ---------------------------------------------------------------------------
# DeepOps and the k8s-mig-manager
# ---------------------------------------------------------------------------


def test_deepops_playbook_sequence(scratch: Path) -> None:
    """nvidia-mig.yml: ``apply -f … -c … -k …`` then ``assert -f … -c …``; a busy
    instance that the next layout would destroy fails the apply, and the assert."""
    state = make_node(scratch / "node.json", [A100, A100])
    hooks, log = recording_hooks(scratch)
    config = scratch / "nvidia-mig-config.yml"
    config.write_text(
        "version: v1\nmig-configs:\n"
        "  all-balanced:\n  - devices: all\n    mig-enabled: true\n"
        "    mig-devices: {1g.5gb: 2, 2g.10gb: 1, 3g.20gb: 1}\n"
        "  all-3g.20gb:\n  - devices: all\n    mig-enabled: true\n"
        "    mig-devices: {3g.20gb: 2}\n"
    )
    env = mig_parted_env(state)

    def play(profile: str) -> tuple[int, int]:
        apply = nvidia_mig_parted(env, "apply", "-f", str(config), "-c", profile, "-k", str(hooks))
        check = nvidia_mig_parted(env, "assert", "-f", str(config), "-c", profile)
        return apply.returncode, check.returncode

    assert play("all-balanced") == (0, 0)
    assert held(0) == held(1) == balanced(A100)
    assert log.read_text().split()[:1] == ["apply-start"]
    gi_1g = next(gi.id for gi in snapshot().gpu(1).instances if gi.placement.size == 1)
    add_process(state, 4242, 1, gi_1g)
    assert play("all-3g.20gb") == (3, 1)
    assert held(0) == {"3g.20gb": 2} and held(1) == balanced(A100)


def test_k8s_mig_manager_sequence(scratch: Path) -> None:
    """reconfigure.go's calls in order, as the mig-manager makes them on a label change."""
    state = make_node(scratch / "node.json", [A100, A100])
    config = scratch / "config.yaml"
    config.write_text(
        "version: v1\nmig-configs:\n  all-1g.5gb:\n  - devices: all\n    mig-enabled: true\n"
        "    mig-devices: {1g.5gb: 7}\n"
    )
    env = mig_parted_env(state)
    select = ("-f", str(config), "-c", "all-1g.5gb")
    sequence = [
        (("assert", "--valid-config", *select), 0),  # validateMigConfig
        (("assert", *select), 1),  # isConfigAlreadyApplied
        (("assert", "--mode-only", *select), 1),  # checkMigModeChangeRequired
        (("-d", "apply", "--mode-only", *select), 0),  # applyMigModeChange
        (("-d", "assert", "--mode-only", *select), 0),
        (("-d", "apply", *select), 0),  # applyMigConfig
        (("assert", *select), 0),  # the next label change: already applied
    ]
    answered = [(args, nvidia_mig_parted(env, *args).returncode) for args, _ in sequence]
    assert answered == sequence
    assert held(0) == held(1) == {"1g.5gb": 7}
    bad = nvidia_mig_parted(env, "assert", "--valid-config", "-f", str(config), "-c", "nope")
    assert bad.returncode != 0


# ---------------------------------------------------------------------------
# restore: mig-parted's flags and checkpoint files
# ---------------------------------------------------------------------------


def test_restore_reads_mig_parteds_checkpoint_with_hooks_and_mode_only(scratch: Path) -> None:
    state = make_node(scratch / "node.json", [A100, A100], clients=False)
    node = snapshot()
    uuids = [g.uuid for g in node.gpus]
    # What nvidia-mig-parted checkpoint writes (api/checkpoint/v1, Go's JSON): GPU 0 with
    # a 3g.20gb (profile index 2) at 4:4 holding one 3-slice CI (index 2), GPU 1 off.
    saved = {
        "Version": "v1",
        "MigState": {
            "Devices": [
                {
                    "UUID": uuids[0],
                    "MigMode": 1,
                    "GpuInstances": [
                        {
                            "ProfileID": 2,
                            "Placement": {"Start": 4, "Size": 4},
                            "ComputeInstances": [{"ProfileID": 2, "EngProfileID": 0}],
                        }
                    ],
                },
                {"UUID": uuids[1], "MigMode": 0, "GpuInstances": None},
            ]
        },
    }
    path = scratch / "checkpoint.json"
    path.write_text(json.dumps(saved))
    assert isinstance(checkpoint_file.read(path), PartedCheckpoint)
    hooks, log = recording_hooks(scratch)
    env = mig_parted_env(
        state, MIG_PARTED_CHECKPOINT_FILE=str(path), MIG_PARTED_HOOKS_FILE=str(hooks)
    )
    run = nvidia_mig_parted(env, "restore", "-m")
    assert run.returncode == 0, run.stdout + run.stderr
    assert snapshot().gpu(0).mig_enabled and not snapshot().gpu(0).instances
    assert log.read_text().split() == ["apply-start", "pre-apply-mode", "apply-exit"]
    run = nvidia_mig_parted(env, "restore")
    assert run.returncode == 0, run.stdout + run.stderr
    gpu = snapshot().gpu(0)
    assert [(gi.placement.start, gi.placement.size) for gi in gpu.instances] == [(4, 4)]
    assert held(0) == {"3g.20gb": 1} and len(gpu.instances[0].compute_instances) == 1
    assert not snapshot().gpu(1).mig_enabled
    # Restored: a second restore changes nothing (the compute instance mig-parted recorded
    # without a placement keeps the one it holds), and its hooks run all the same.
    before = mutating_calls(stats(state))
    assert nvidia_mig_parted(env, "restore").returncode == 0
    assert mutating_calls(stats(state)) == before
    assert log.read_text().split()[-2:] == ["apply-start", "apply-exit"]


def test_a_broken_mig_parted_checkpoint_is_refused_naming_the_key(scratch: Path) -> None:
    state = make_node(scratch / "node.json", [A100], clients=False)
    path = scratch / "checkpoint.json"
    device = {"UUID": "GPU-0", "MigMode": 2, "GpuInstances": [{"ProfileID": 0}]}
    path.write_text(json.dumps({"Version": "v1", "MigState": {"Devices": [device]}}))
    run = nvidia_mig_parted(mig_parted_env(state), "restore", "-f", str(path))
    assert run.returncode == 2
    assert "MigState.Devices[0].MigMode: must be 0 (disabled) or 1 (enabled), not 2" in run.stderr
    assert "MigState.Devices[0].GpuInstances[0].Placement: missing" in run.stderr
    # A GPU this node does not have: refused before anything is touched.
    device = {"UUID": "GPU-elsewhere", "MigMode": 1, "GpuInstances": None}
    path.write_text(json.dumps({"Version": "v1", "MigState": {"Devices": [device]}}))
    run = nvidia_mig_parted(mig_parted_env(state), "restore", "-f", str(path))
    assert run.returncode == 2
    assert "GPU-elsewhere" in run.stderr
    assert not snapshot().gpu(0).mig_enabled
