"""mig-parted's hooks file, and running the hooks it names.

The hooks file is mig-parted's ``api/hooks/v1`` format, read unchanged::

    version: v1
    hooks:
      apply-start:
      - workdir: /etc/nvidia-mig-manager
        command: /bin/bash
        args: ["-x", "-c", "source hooks.sh; apply-start ${MIG_PARTED_SELECTED_CONFIG}"]
        envs: {HOOKS_DEBUG: "1"}

Stages run in this order around a change: ``apply-start``; ``pre-apply-mode`` when
some GPU's MIG mode changes; ``pre-apply-config`` when some GPU's instances change;
the change; ``apply-exit``, always, whatever happened before (``migd.node.change`` drives
the order). A hook is executed as written: ``command`` with ``args`` as its argv, no
shell, nothing expanded. A hook that wants a shell names one, as mig-parted's default
hooks do (``/bin/bash -c "…${MIG_PARTED_SELECTED_CONFIG}"``: bash expands that, not
migd). Its environment is only its ``envs``, ``PATH``, and the ``MIG_PARTED_*``
variables mig-parted documents with ``MIGD_*`` twins (:func:`hook_environment`);
migd's own environment is never passed on.

Deliberate differences from mig-parted, each turning a silent surprise into a message
or a bounded failure:

- an unknown stage name or hook key is an error (mig-parted ignores ``pre-apply-configs:``
  or ``env:``, so that hook or those variables would silently never apply);
- ``workdir`` must be an absolute path (the daemon runs from ``/``);
- every hook has a timeout (``settings.command-timeout``), after which its whole
  process group is killed; mig-parted waits forever, and a hook blocked on a unit
  ordered after the daemon hangs the boot (mig-parted issues #68, #11, #8);
- ``apply-exit`` runs even when ``apply-start`` failed (it is where hooks restart what
  they stopped), and all its hooks run even when one fails;
- hooks get a ``PATH`` (systemd's default unless their ``envs`` set one); mig-parted
  gives them none, so only absolute commands and bash's built-in default worked;
- a change that changes nothing runs no hook: the daemon checks the GPUs every minute.

A hook runs through :func:`migd.command.run_command`, as every external program does.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from yaml.nodes import Node, ScalarNode

from migd.command import CommandResult, run_command

# The config's YAML reader: the same limits, positions and alias checks for every file
# format migd reads (STYLE.md: each format parsed in one place, YAML read one way).
from migd.formats.config_file import (
    InvalidValue,
    YamlReader,
    is_null,
    join_key,
    read_path,
    read_trusted_file,
    read_version,
    read_yaml_document,
    shorten,
)

log = logging.getLogger("migd.node.hooks")

HOOKS_VERSION = "v1"

APPLY_START = "apply-start"
PRE_APPLY_MODE = "pre-apply-mode"
PRE_APPLY_CONFIG = "pre-apply-config"
APPLY_EXIT = "apply-exit"
STAGES = (APPLY_START, PRE_APPLY_MODE, PRE_APPLY_CONFIG, APPLY_EXIT)

HOOK_KEYS = ("command", "args", "envs", "workdir")

# systemd's default PATH for services (systemd.exec(5)): what a hook would see if it
# were a unit of its own.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# ---------------------------------------------------------------------------
# The hooks file
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    """One hook: run ``command`` with ``args`` in ``workdir`` with ``envs`` added."""

    stage: str
    position: int  # 0-based, within its stage
    command: str
    args: tuple[str, ...] = ()
    envs: tuple[tuple[str, str], ...] = ()  # file order
    workdir: str | None = None
    line: int | None = None  # where the file defines it

    @property
    def argv(self) -> tuple[str, ...]:
        return (self.command, *self.args)

    @property
    def label(self) -> str:
        """``apply-exit[1]``: the stage and the hook's position in it, for logs."""
        return f"{self.stage}[{self.position}]"


@dataclass(frozen=True)
class HooksFile:
    """A parsed hooks file: its hooks, stage by stage in file order."""

    source: str | None
    hooks: tuple[Hook, ...] = ()

    def stage(self, name: str) -> tuple[Hook, ...]:
        return tuple(h for h in self.hooks if h.stage == name)


NO_HOOKS = HooksFile(None)


def parse_hooks(data: bytes, source: str) -> HooksFile:
    """Parse hooks file bytes (``source`` names the file); ConfigError lists every problem."""
    return read_yaml_document(data, source, lambda r, root: _read_hooks_document(r, root))


def load_hooks(path: str, *, euid: int | None = None) -> HooksFile:
    """Read and parse the hooks file at ``path`` under the root file policy."""
    return parse_hooks(read_trusted_file(path, euid=euid), path)


def _read_hooks_document(r: YamlReader, root: Node | None) -> HooksFile:
    if root is None:  # empty, or only comments: no hooks
        return HooksFile(r.source)
    found = r.fields(root, "", "a hooks file", ("version", "hooks"))
    read_version(
        r, root, found, HOOKS_VERSION, reads=f"version: {HOOKS_VERSION} (mig-parted's hooks format)"
    )
    hooks: list[Hook] = []
    if "hooks" in found and not is_null(found["hooks"][1]):
        _, node = found["hooks"]
        for stage, key_node, value_node in r.mapping(node, "hooks", "hooks"):
            path = join_key("hooks", stage)
            if stage not in STAGES:
                r.report(
                    key_node,
                    path,
                    f"unknown hook {shorten(stage)!r}; mig-parted's hooks are "
                    f"{', '.join(STAGES)} (mig-parted would silently never run it)",
                )
                continue
            if not is_null(value_node):
                ok, stage_hooks = r.attempt(
                    lambda n=value_node, p=path, s=stage: _read_stage(r, n, p, s)
                )
                hooks.extend(stage_hooks if ok else ())  # type: ignore[arg-type]
    # Stages in migd's order, whatever order the file lists them in.
    hooks.sort(key=lambda h: STAGES.index(h.stage))
    return HooksFile(r.source, tuple(hooks))


def _read_stage(r: YamlReader, node: Node, path: str, stage: str) -> list[Hook]:
    hooks: list[Hook] = []
    expected = f"the {stage} hooks must be a list of hooks (- command: …)"
    for i, item in enumerate(r.sequence(node, path, expected)):
        ok, hook = r.attempt(lambda n=item, p=f"{path}[{i}]", i=i: _read_hook(r, n, p, stage, i))
        if ok:
            hooks.append(hook)  # type: ignore[arg-type]
    return hooks


def _read_hook(r: YamlReader, node: Node, path: str, stage: str, position: int) -> Hook:
    found = r.fields(node, path, "a hook", HOOK_KEYS)
    before = len(r.problems)
    if "command" not in found or is_null(found["command"][1]):
        r.fail(node, path, "this hook has no command:; name the program to run")
    command = r.text(found["command"][1], join_key(path, "command"), "command")
    if not command or "\x00" in command:
        r.report(found["command"][1], join_key(path, "command"), "the command is empty")
    args: list[str] = []
    if "args" in found and not is_null(found["args"][1]):
        args_path = join_key(path, "args")
        for i, item in enumerate(r.sequence(found["args"][1], args_path, "args")):
            ok, arg = r.attempt(lambda n=item, p=f"{args_path}[{i}]": _read_arg(r, n, p))
            if ok:
                args.append(str(arg))
    envs: list[tuple[str, str]] = []
    if "envs" in found and not is_null(found["envs"][1]):
        envs_path = join_key(path, "envs")
        for name, key_node, value_node in r.mapping(found["envs"][1], envs_path, "envs"):
            if not _ENV_NAME_RE.match(name):
                r.report(
                    key_node,
                    join_key(envs_path, name),
                    f"{shorten(name)!r} is not an environment variable name "
                    "(letters, digits and _, not starting with a digit)",
                )
                continue
            value_path = join_key(envs_path, name)
            ok, value = r.attempt(lambda n=value_node, p=value_path: _read_arg(r, n, p))
            if ok:
                envs.append((name, str(value)))
    workdir: str | None = None
    if "workdir" in found and not is_null(found["workdir"][1]):
        ok, value = r.attempt(lambda: read_path(r, found["workdir"][1], join_key(path, "workdir")))
        workdir = str(value) if ok else None
    if len(r.problems) > before:
        raise InvalidValue
    return Hook(
        stage=stage,
        position=position,
        command=command,
        args=tuple(args),
        envs=tuple(envs),
        workdir=workdir,
        line=node.start_mark.line + 1,
    )


def _read_arg(r: YamlReader, node: Node, path: str) -> str:
    value = r.scalar(node, path)
    if not isinstance(value, str):
        # mig-parted (Go, strings only) refuses numbers and booleans here too.
        hint = f' (quote it: "{node.value}")' if isinstance(node, ScalarNode) else ""
        r.fail(node, path, f"must be text, not {r.describe(node)}{hint}")
    if "\x00" in value:
        r.fail(node, path, "cannot contain a NUL character")
    return value


# ---------------------------------------------------------------------------
# Running hooks
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HookContext:
    """What an apply is about: the hooks' ``MIG_PARTED_*`` and ``MIGD_*`` variables.

    ``config_file`` and ``hooks_file`` are as given (``-`` for standard input, empty
    when there is no hooks file), as mig-parted passes its flags on.
    """

    selected_config: str
    config_file: str
    hooks_file: str = ""
    skip_reset: bool = False
    mode_only: bool = False


def _flag(value: bool) -> str:
    return "true" if value else "false"  # Go's %v of a bool, as mig-parted formats it


def hook_environment(
    hook: Hook,
    context: HookContext,
    *,
    exit_code: int | None = None,
    path: str = DEFAULT_PATH,
) -> dict[str, str]:
    """The whole environment of ``hook``: nothing of migd's own environment leaks in.

    ``PATH``, then the hook's ``envs`` (which may set PATH), then, overriding them as
    in mig-parted, ``MIG_PARTED_{SELECTED_CONFIG,CONFIG_FILE,HOOKS_FILE,SKIP_RESET,
    MODE_CHANGE_ONLY}`` and the same values as ``MIGD_*``, plus ``MIGD_HOOK`` (the
    stage) and, for ``apply-exit``, ``MIGD_EXIT_CODE`` (migd's exit code for the apply:
    0 ok, 1 failed, 2 invalid, 3 blocked, 4 reboot required).
    """
    shared = {
        "SELECTED_CONFIG": context.selected_config,
        "CONFIG_FILE": context.config_file,
        "HOOKS_FILE": context.hooks_file,
        "SKIP_RESET": _flag(context.skip_reset),
        "MODE_CHANGE_ONLY": _flag(context.mode_only),
    }
    env = {"PATH": path}
    env.update(hook.envs)
    for name, value in shared.items():
        env[f"MIG_PARTED_{name}"] = value
        env[f"MIGD_{name}"] = value
    env["MIGD_HOOK"] = hook.stage
    if exit_code is not None:
        env["MIGD_EXIT_CODE"] = str(exit_code)
    return env


@dataclass(frozen=True)
class HookRun:
    hook: Hook
    result: CommandResult

    def describe(self) -> str:
        """``hook apply-start[0] (/bin/false): exited with status 1``, or ``… ok``."""
        outcome = "ok" if self.result.ok else self.result.error
        return f"hook {self.hook.label} ({shorten(self.result.command_line, 80)}): {outcome}"


@dataclass(frozen=True)
class StageRun:
    """The hooks of one stage that ran, in order; a failing hook ends all but apply-exit."""

    stage: str
    runs: tuple[HookRun, ...] = ()

    @property
    def ok(self) -> bool:
        return all(run.result.ok for run in self.runs)

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(run.describe() for run in self.runs if not run.result.ok)


def run_stage(
    hooks: HooksFile,
    stage: str,
    context: HookContext,
    *,
    timeout: float,
    exit_code: int | None = None,
    say: Callable[[str], None] | None = None,
) -> StageRun:
    """Run the hooks of ``stage`` in file order; ``say`` hears one line per hook.

    A failing hook ends the stage (mig-parted's rule), except in ``apply-exit``, where
    every hook runs: those are the hooks that put the node back in service. The hooks'
    output is logged at debug level, and its last lines when a hook fails; the values
    of their environment are never logged (``envs`` may hold credentials).
    """
    runs: list[HookRun] = []
    for hook in hooks.stage(stage):
        names = ", ".join(name for name, _ in hook.envs)
        log.debug("hook %s: envs %s", hook.label, names or "none")
        if say is not None:
            say(f"running hook {hook.label}: {shlex.join(hook.argv)}")
        result = run_command(
            hook.argv,
            timeout=timeout,
            env=hook_environment(hook, context, exit_code=exit_code),
            cwd=hook.workdir,
        )
        run = HookRun(hook, result)
        runs.append(run)
        for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            for line in text.splitlines():
                log.debug("hook %s %s: %s", hook.label, stream, line)
        if result.ok:
            log.info("%s (%.1f s)", run.describe(), result.duration)
            continue
        log.error("%s", run.describe())
        if say is not None:
            say(run.describe())
        if stage != APPLY_EXIT:
            break
    return StageRun(stage, tuple(runs))
