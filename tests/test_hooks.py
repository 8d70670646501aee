"""mig-parted's hooks file, and hooks run as real commands."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest
import yaml
from geometry_support import H200, config_text, make_node, snapshot
from paths import anchor

from migd.cli import main
from migd.core.layout import NodeSnapshot
from migd.errors import ConfigError
from migd.formats.hooks_file import (
    APPLY_EXIT,
    APPLY_START,
    PRE_APPLY_CONFIG,
    PRE_APPLY_MODE,
    STAGES,
    Hook,
    HooksFile,
    load_hooks,
    parse_hooks,
)
from migd.gpu.executor import GpuOutcome, GpuResult, ReconcileResult
from migd.node.change import Change, ChangeAborted, NodeServices, around_change
from migd.node.hooks import DEFAULT_PATH, HookContext, hook_environment, run_stage

CONTEXT = HookContext(
    selected_config="all-balanced",
    config_file="/etc/migd/config.yaml",
    hooks_file="/etc/migd/hooks.yaml",
)
SH = "/bin/sh"
MIG_PARTED_VARS = {
    "MIG_PARTED_SELECTED_CONFIG",
    "MIG_PARTED_CONFIG_FILE",
    "MIG_PARTED_HOOKS_FILE",
    "MIG_PARTED_SKIP_RESET",
    "MIG_PARTED_MODE_CHANGE_ONLY",
}
MIGD_VARS = {name.replace("MIG_PARTED_", "MIGD_") for name in MIG_PARTED_VARS} | {"MIGD_HOOK"}


def parse(text: str) -> HooksFile:
    return parse_hooks(textwrap.dedent(text).encode(), "hooks.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return [str(p) for p in info.value.problems]


def hooks_file(stages: dict[str, list[dict[str, object]]]) -> HooksFile:
    """A HooksFile from a mapping, through the real parser (so tests use the format)."""
    data = yaml.safe_dump({"version": "v1", "hooks": stages}).encode()
    return parse_hooks(data, "test-hooks.yaml")


def append_to(log: Path, word: str) -> dict[str, object]:
    """A hook that appends ``word`` to ``log`` (the hook names its shell, as it must)."""
    return {"command": SH, "args": ["-c", f'echo {word} >> "$LOG"'], "envs": {"LOG": str(log)}}


def failing(code: int = 7) -> dict[str, object]:
    return {"command": SH, "args": ["-c", f"echo going down >&2; exit {code}"]}


# ---------------------------------------------------------------------------
# The format
# ---------------------------------------------------------------------------


def test_mig_parted_default_hooks_parse_unchanged() -> None:
    hooks = load_hooks(str(anchor("hooks-default.yaml")))
    assert [h.label for h in hooks.hooks] == [
        "apply-start[0]",
        "pre-apply-mode[0]",
        "pre-apply-config[0]",
        "apply-exit[0]",
        "apply-exit[1]",
    ]
    start = hooks.stage(APPLY_START)[0]
    assert start.argv == (
        "/bin/bash",
        "-x",
        "-c",
        "source hooks.sh; apply-start ${MIG_PARTED_SELECTED_CONFIG}",
    )
    assert start.workdir == "/etc/nvidia-mig-manager"
    assert start.envs == ()
    assert start.line == 4
    assert hooks.stage(APPLY_EXIT)[1].args[-1] == "source hooks.sh; refresh-cdi"


def test_mig_parted_minimal_hooks_parse_unchanged() -> None:
    hooks = load_hooks(str(anchor("hooks-minimal.yaml")))
    assert [h.label for h in hooks.hooks] == ["apply-start[0]"]
    assert hooks.stage(PRE_APPLY_MODE) == hooks.stage(APPLY_EXIT) == ()


def test_all_keys_and_stage_order_whatever_the_file_order() -> None:
    hooks = parse(
        """\
        version: v1
        hooks:
          apply-exit:
          - command: /bin/true
          apply-start:
          - command: /usr/bin/env
            args: ["-i"]
            envs: {A: "1", B_2: "x y"}
            workdir: /
          - command: echo
        """
    )
    assert [h.label for h in hooks.hooks] == ["apply-start[0]", "apply-start[1]", "apply-exit[0]"]
    first = hooks.hooks[0]
    assert first == Hook(
        stage="apply-start",
        position=0,
        command="/usr/bin/env",
        args=("-i",),
        envs=(("A", "1"), ("B_2", "x y")),
        workdir="/",
        line=6,
    )


def test_empty_file_and_empty_hooks_mean_no_hooks() -> None:
    assert parse("").hooks == ()
    assert parse("version: v1\nhooks:\n").hooks == ()
    assert parse("version: v1\nhooks:\n  apply-start:\n").hooks == ()


def test_a_hook_under_an_unknown_stage_is_not_run_and_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """mig-parted ignores stage names it does not know; migd too, but says so, with the line."""
    path = tmp_path / "hooks.yaml"
    path.write_text(
        "version: v1\nhooks:\n  apply-start:\n  - command: /bin/true\n"
        "  pre-apply-configs:\n  - command: /bin/false\n"
    )
    with caplog.at_level("WARNING", logger="migd"):
        hooks = load_hooks(str(path))
    assert [h.command for h in hooks.hooks] == ["/bin/true"]
    assert f"{path}:5:3: hooks.pre-apply-configs: unknown hook 'pre-apply-configs', not run" in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hooks: {}\n", "hooks.yaml:1:1: version is missing"),
        ("version: v2\n", "hooks.yaml:1:10: version: unknown version 'v2'"),
        (
            "version: v1\nhooks:\n  apply-start:\n  - command: /bin/true\n    env: {A: b}\n",
            "hooks.yaml:5:5: hooks.apply-start[0].env: unknown key 'env' in a hook; "
            "did you mean 'envs'?",
        ),
        (
            "version: v1\nhooks:\n  apply-start:\n  - args: [x]\n",
            "hooks.yaml:4:5: hooks.apply-start[0]: this hook has no command:",
        ),
        (
            "version: v1\nhooks:\n  apply-start:\n  - command: /bin/echo\n    args: [1]\n",
            "hooks.yaml:5:12: hooks.apply-start[0].args[0]: must be text, not the number 1 "
            '(quote it: "1")',
        ),
        (
            "version: v1\nhooks:\n  apply-exit:\n  - command: /bin/true\n    workdir: etc\n",
            "hooks.yaml:5:14: hooks.apply-exit[0].workdir: must be an absolute path",
        ),
        (
            "version: v1\nhooks:\n  apply-exit:\n  - command: /bin/true\n    envs: {1A: x}\n",
            "hooks.yaml:5:12: hooks.apply-exit[0].envs.1A: '1A' is not an environment "
            "variable name",
        ),
        (
            "version: v1\nhooks:\n  apply-exit:\n  - command: /bin/true\n    envs: {A: 2}\n",
            "hooks.yaml:5:15: hooks.apply-exit[0].envs.A: must be text",
        ),
        ("version: v1\nhooks:\n  apply-exit: /bin/true\n", "must be a list"),
        ("version: v1\nhooks: [1]\n", "hooks must be a mapping"),
        ("version: v1\nversion: v1\n", "duplicate key 'version'"),
    ],
)
def test_invalid_hooks_files_say_where(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        """\
        version: v1
        hooks:
          apply-start:
          - command: /bin/true
            bogus: 1
          pre-apply-mode: /bin/true

          apply-exit:
          - args: []
        """
    )
    assert [p.split(":")[1] for p in found] == ["5", "6", "9"]


def test_a_hooks_file_root_does_not_own_is_refused_as_root(tmp_path: Path) -> None:
    path = tmp_path / "hooks.yaml"
    path.write_text("version: v1\n")
    path.chmod(0o666)
    with pytest.raises(ConfigError, match=r"refusing this file as root: .*writable by"):
        load_hooks(str(path), euid=0)
    assert load_hooks(str(path), euid=1000).hooks == ()
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    if os.geteuid() == 0:
        assert load_hooks(str(path), euid=0).hooks == ()


def test_a_missing_hooks_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_hooks(str(tmp_path / "absent.yaml"))


# ---------------------------------------------------------------------------
# Running commands and hooks
# ---------------------------------------------------------------------------


def test_a_hook_that_wants_a_shell_names_one_and_gets_migd_variables() -> None:
    hooks = hooks_file(
        {APPLY_START: [{"command": SH, "args": ["-c", "echo config=$MIG_PARTED_SELECTED_CONFIG"]}]}
    )
    ran = run_stage(hooks, APPLY_START, CONTEXT, timeout=10)
    assert ran.ok
    assert ran.runs[0].result.stdout == "config=all-balanced\n"


def test_the_environment_is_only_envs_path_and_mig_parted_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIGD_TEST_SECRET", "do-not-leak")
    hooks = hooks_file({APPLY_EXIT: [{"command": "/usr/bin/env", "envs": {"TOKEN": "t0k3n"}}]})
    ran = run_stage(hooks, APPLY_EXIT, CONTEXT, timeout=10, exit_code=3)
    env = dict(line.split("=", 1) for line in ran.runs[0].result.stdout.splitlines())
    assert set(env) == {"PATH", "TOKEN", "MIGD_EXIT_CODE"} | MIG_PARTED_VARS | MIGD_VARS
    assert env["PATH"] == DEFAULT_PATH
    assert env["TOKEN"] == "t0k3n"
    assert env["MIG_PARTED_SELECTED_CONFIG"] == env["MIGD_SELECTED_CONFIG"] == "all-balanced"
    assert env["MIG_PARTED_CONFIG_FILE"] == "/etc/migd/config.yaml"
    assert env["MIG_PARTED_HOOKS_FILE"] == "/etc/migd/hooks.yaml"
    assert env["MIG_PARTED_SKIP_RESET"] == env["MIG_PARTED_MODE_CHANGE_ONLY"] == "false"
    assert env["MIGD_HOOK"] == "apply-exit"
    assert env["MIGD_EXIT_CODE"] == "3"


def test_mig_parted_variables_override_envs_and_envs_may_set_path() -> None:
    hook = Hook(
        "apply-start",
        0,
        "/usr/bin/env",
        envs=(("MIG_PARTED_SELECTED_CONFIG", "mine"), ("PATH", "/opt/bin")),
    )
    context = HookContext("chosen", "-", skip_reset=True, mode_only=True)
    env = hook_environment(hook, context)
    assert env["MIG_PARTED_SELECTED_CONFIG"] == "chosen"
    assert env["PATH"] == "/opt/bin"
    assert env["MIG_PARTED_CONFIG_FILE"] == "-"
    assert env["MIG_PARTED_HOOKS_FILE"] == ""
    assert env["MIG_PARTED_SKIP_RESET"] == env["MIGD_MODE_CHANGE_ONLY"] == "true"
    assert "MIGD_EXIT_CODE" not in env


def test_a_bare_command_is_found_on_the_hooks_path(tmp_path: Path) -> None:
    tool = tmp_path / "my-tool"
    tool.write_text("#!/bin/sh\necho tool ran in $(pwd)\n")
    tool.chmod(0o755)
    hooks = hooks_file(
        {
            APPLY_START: [
                {"command": "my-tool", "envs": {"PATH": str(tmp_path)}, "workdir": str(tmp_path)}
            ]
        }
    )
    ran = run_stage(hooks, APPLY_START, CONTEXT, timeout=10)
    assert ran.runs[0].result.stdout == f"tool ran in {tmp_path}\n"


def test_a_missing_command_or_workdir_fails_the_hook() -> None:
    hooks = hooks_file(
        {
            APPLY_START: [{"command": "/nonexistent/hook"}],
            APPLY_EXIT: [
                {"command": "no-such-command-anywhere"},
                {"command": "/bin/true", "workdir": "/nonexistent"},
            ],
        }
    )
    ran = run_stage(hooks, APPLY_START, CONTEXT, timeout=10)
    assert not ran.ok
    assert ran.errors == (
        "hook apply-start[0] (/nonexistent/hook): /nonexistent/hook: command not found",
    )
    ran = run_stage(hooks, APPLY_EXIT, CONTEXT, timeout=10)
    assert [r.result.error for r in ran.runs] == [
        "no-such-command-anywhere: command not found",
        "workdir /nonexistent: no such directory",
    ]


def test_a_failing_hook_reports_its_status_and_last_line() -> None:
    ran = run_stage(hooks_file({APPLY_START: [failing(7)]}), APPLY_START, CONTEXT, timeout=10)
    result = ran.runs[0].result
    assert (result.returncode, result.error) == (7, "exited with status 7: going down")


def test_hooks_run_in_file_order_and_a_failure_ends_the_stage(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hooks = hooks_file(
        {
            APPLY_START: [
                append_to(log, "one"),
                append_to(log, "two"),
                failing(),
                append_to(log, "x"),
            ]
        }
    )
    ran = run_stage(hooks, APPLY_START, CONTEXT, timeout=10)
    assert log.read_text() == "one\ntwo\n"
    assert len(ran.runs) == 3 and not ran.ok


def test_every_apply_exit_hook_runs_even_after_one_fails(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hooks = hooks_file({APPLY_EXIT: [append_to(log, "one"), failing(), append_to(log, "three")]})
    ran = run_stage(hooks, APPLY_EXIT, CONTEXT, timeout=10)
    assert log.read_text() == "one\nthree\n"
    assert len(ran.errors) == 1


def test_hook_environment_values_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="migd")
    hooks = hooks_file({APPLY_START: [{"command": "/bin/true", "envs": {"API_TOKEN": "s3cr3t"}}]})
    run_stage(hooks, APPLY_START, CONTEXT, timeout=10)
    assert "API_TOKEN" in caplog.text
    assert "s3cr3t" not in caplog.text


# ---------------------------------------------------------------------------
# Around a change: order, and the failure rules
# ---------------------------------------------------------------------------

EMPTY = NodeSnapshot(())


def result_of(outcome: GpuOutcome, mutations: int = 4) -> ReconcileResult:
    return ReconcileResult("all-balanced", (GpuResult(0, outcome, mutations=mutations),), (), EMPTY)


class Act:
    """The reconcile stand-in: records that it ran, in the shared log, and returns a result."""

    def __init__(self, log: Path, result: ReconcileResult) -> None:
        self.log = log
        self.result = result
        self.calls = 0

    def __call__(self) -> ReconcileResult:
        self.calls += 1
        with self.log.open("a") as f:
            f.write("CHANGE\n")
        return self.result


def every_stage(log: Path) -> dict[str, list[dict[str, object]]]:
    return {
        stage: [
            {
                "command": SH,
                "args": ["-c", f'echo {stage} ${{MIGD_EXIT_CODE:-}} >> "$LOG"'],
                "envs": {"LOG": str(log)},
            }
        ]
        for stage in STAGES
    }


def services(stages: dict[str, list[dict[str, object]]]) -> NodeServices:
    return NodeServices(hooks=hooks_file(stages), timeout=10)


@pytest.mark.parametrize(
    ("mode", "instances", "expected"),
    [
        (True, True, ["apply-start", "pre-apply-mode", "pre-apply-config", "CHANGE"]),
        (True, False, ["apply-start", "pre-apply-mode", "CHANGE"]),
        (False, True, ["apply-start", "pre-apply-config", "CHANGE"]),
    ],
)
def test_stages_run_in_order_and_only_when_their_change_happens(
    tmp_path: Path, mode: bool, instances: bool, expected: list[str]
) -> None:
    log = tmp_path / "log"
    act = Act(log, result_of(GpuOutcome.APPLIED))
    change = Change(EMPTY, (0,), mode=mode, instances=instances)
    report = around_change(
        services(every_stage(log)), change, act, context=CONTEXT, post_boot=False
    )
    assert [line.strip() for line in log.read_text().splitlines()] == [*expected, "apply-exit 0"]
    assert report.result is act.result and not report.problems


def test_no_hook_runs_when_nothing_changes(tmp_path: Path) -> None:
    log = tmp_path / "log"
    act = Act(log, result_of(GpuOutcome.NOOP, mutations=0))
    around_change(services(every_stage(log)), Change(EMPTY), act, context=CONTEXT, post_boot=True)
    assert log.read_text() == "CHANGE\n"


@pytest.mark.parametrize("stage", [APPLY_START, PRE_APPLY_MODE, PRE_APPLY_CONFIG])
def test_a_failing_hook_before_the_change_aborts_it_and_apply_exit_still_runs(
    tmp_path: Path, stage: str
) -> None:
    log = tmp_path / "log"
    stages = every_stage(log)
    stages[stage] = [failing(5)]
    act = Act(log, result_of(GpuOutcome.APPLIED))
    change = Change(EMPTY, (0,), mode=True, instances=True)
    with pytest.raises(ChangeAborted) as info:
        around_change(services(stages), change, act, context=CONTEXT, post_boot=True)
    assert act.calls == 0
    lines = log.read_text().splitlines()
    assert "CHANGE" not in lines
    assert lines[-1].strip() == "apply-exit 1"  # MIGD_EXIT_CODE: the apply failed
    assert f"hook {stage}[0]" in info.value.reason
    assert str(info.value).endswith("no GPU was changed")
    assert info.value.exit_code == 1
    assert info.value.report.result is None


def test_a_failing_apply_exit_is_reported_and_does_not_change_the_outcome(tmp_path: Path) -> None:
    log = tmp_path / "log"
    stages = every_stage(log)
    stages[APPLY_EXIT] = [failing(9), *stages[APPLY_EXIT]]
    act = Act(log, result_of(GpuOutcome.APPLIED))
    report = around_change(
        services(stages), Change(EMPTY, (0,), mode=True), act, context=CONTEXT, post_boot=False
    )
    assert report.result is act.result
    assert report.problems == (
        "hook apply-exit[0] (/bin/sh -c 'echo going down >&2; exit 9'): "
        "exited with status 9: going down",
    )
    assert log.read_text().splitlines()[-1].strip() == "apply-exit 0"


def test_apply_exit_gets_the_failed_outcome_of_the_change(tmp_path: Path) -> None:
    log = tmp_path / "log"
    act = Act(log, result_of(GpuOutcome.BLOCKED))
    around_change(
        services(every_stage(log)), Change(EMPTY, (0,), True), act, context=CONTEXT, post_boot=False
    )
    assert log.read_text().splitlines()[-1].strip() == "apply-exit 3"


def test_apply_exit_runs_when_the_change_raises(tmp_path: Path) -> None:
    log = tmp_path / "log"

    def explode() -> ReconcileResult:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        around_change(
            services(every_stage(log)),
            Change(EMPTY, (0,), True),
            explode,
            context=CONTEXT,
            post_boot=False,
        )
    assert log.read_text().splitlines()[-1].strip() == "apply-exit 1"


# ---------------------------------------------------------------------------
# migd apply -k: mig-parted's flag, end to end on a simulated node
# ---------------------------------------------------------------------------


def test_migd_apply_runs_the_hooks_file_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_node(tmp_path / "node.json", [H200])
    config = tmp_path / "config.yaml"
    config.write_text(config_text({"small": "1g.18gb=7"}))
    log = tmp_path / "log"
    hooks = tmp_path / "hooks.yaml"
    hooks.write_text(yaml.safe_dump({"version": "v1", "hooks": every_stage(log)}))
    code = main(["--simulate", str(state), "apply", "-f", str(config), "-k", str(hooks)])
    assert code == 0, capsys.readouterr()
    assert [line.strip() for line in log.read_text().splitlines()] == [
        "apply-start",
        "pre-apply-mode",
        "pre-apply-config",
        "apply-exit 0",
    ]
    assert "hooks: apply-start[0]" in capsys.readouterr().out
    # In sync now: a second apply changes nothing, and runs apply-start and apply-exit as
    # mig-parted does on every apply (its shipped hooks persist the config there).
    assert main(["--simulate", str(state), "apply", "-f", str(config), "-k", str(hooks)]) == 0
    assert [line.strip() for line in log.read_text().splitlines()[4:]] == [
        "apply-start",
        "apply-exit 0",
    ]


def test_migd_apply_with_a_bad_hooks_file_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_node(tmp_path / "node.json", [H200])
    config = tmp_path / "config.yaml"
    config.write_text(config_text({"small": "1g.18gb=7"}))
    hooks = tmp_path / "hooks.yaml"
    hooks.write_text("version: v1\nhooks:\n  apply-start: /bin/true\n")
    code = main(["--simulate", str(state), "apply", "-f", str(config), "-k", str(hooks)])
    assert code == 2
    assert f"{hooks}:3:16: hooks.apply-start: " in capsys.readouterr().err
    assert not snapshot().gpu(0).mig_enabled
