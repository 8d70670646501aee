"""Running the hooks of mig-parted's hooks file (read by ``migd.formats.hooks_file``).

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

- an unknown hook key is an error, ``workdir`` must be absolute, and a stage name that
  is none of the four is warned about (``migd.formats.hooks_file``);
- every hook has a timeout (``settings.command-timeout``), after which its whole
  process group is killed; mig-parted waits forever, and a hook blocked on a unit
  ordered after the daemon hangs the boot (mig-parted issues #68, #11, #8);
- ``apply-exit`` runs even when ``apply-start`` failed (it is where hooks restart what
  they stopped), and all its hooks run even when one fails;
- hooks get a ``PATH`` (systemd's default unless their ``envs`` set one); mig-parted
  gives them none, so only absolute commands and bash's built-in default worked;
- in the daemon, a reconcile that changes nothing runs no hook (it checks the GPUs
  every minute); ``migd apply`` and ``migd restore`` run ``apply-start`` and
  ``apply-exit`` every time, as mig-parted does.

A hook runs through :func:`migd.command.run_command`, as every external program does.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from migd.command import CommandResult, run_command
from migd.errors import shorten
from migd.formats.hooks_file import APPLY_EXIT, Hook, HooksFile

log = logging.getLogger("migd.node.hooks")

# systemd's default PATH for services (systemd.exec(5)): what a hook would see if it
# were a unit of its own.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

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
