"""mig-parted's hooks file (``api/hooks/v1``), read unchanged::

    version: v1
    hooks:
      apply-start:
      - workdir: /etc/nvidia-mig-manager
        command: /bin/bash
        args: ["-x", "-c", "source hooks.sh; apply-start ${MIG_PARTED_SELECTED_CONFIG}"]
        envs: {HOOKS_DEBUG: "1"}

Parsed here and nowhere else, through the located-YAML reader; running the hooks is
``migd.node.hooks``'s job. Deliberate differences from mig-parted, each turning a
silent surprise into a message:

- an unknown hook key is an error (mig-parted ignores ``env:``, so those variables
  would silently never apply); a hook under a stage name that is not one of the four
  is not run, as in mig-parted, but warned about with its line (``pre-apply-configs:``
  would otherwise never run, silently);
- ``workdir`` must be an absolute path (the daemon runs from ``/``);
- ``command``, ``args`` and ``envs`` values must be text (mig-parted, in Go, refuses
  numbers and booleans there too).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from yaml.nodes import Node as YamlNode

from migd.errors import shorten
from migd.formats.files import read_trusted_file
from migd.formats.yaml_reader import (
    InvalidValue,
    YamlReader,
    is_null,
    join_key,
    read_argument,
    read_path,
    read_version,
    read_yaml_document,
)

log = logging.getLogger("migd.formats.hooks_file")

HOOKS_VERSION = "v1"

APPLY_START = "apply-start"
PRE_APPLY_MODE = "pre-apply-mode"
PRE_APPLY_CONFIG = "pre-apply-config"
APPLY_EXIT = "apply-exit"
STAGES = (APPLY_START, PRE_APPLY_MODE, PRE_APPLY_CONFIG, APPLY_EXIT)

HOOK_KEYS = ("command", "args", "envs", "workdir")

_ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"

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
    """A parsed hooks file: its hooks, stage by stage in file order.

    ``ignored`` names, with their place, the stages that are none of :data:`STAGES`.
    """

    source: str | None
    hooks: tuple[Hook, ...] = ()
    ignored: tuple[str, ...] = ()

    def stage(self, name: str) -> tuple[Hook, ...]:
        return tuple(h for h in self.hooks if h.stage == name)


NO_HOOKS = HooksFile(None)


def parse_hooks(data: bytes, source: str) -> HooksFile:
    """Parse hooks file bytes (``source`` names the file); ConfigError lists every problem."""
    return read_yaml_document(data, source, lambda r, root: _read_hooks_document(r, root))


def load_hooks(path: str, *, euid: int | None = None) -> HooksFile:
    """Read and parse the hooks file at ``path`` under the root file policy; the stages it
    ignores are logged as warnings."""
    hooks = parse_hooks(read_trusted_file(path, euid=euid), path)
    for warning in hooks.ignored:
        log.warning("%s", warning)
    return hooks


def _read_hooks_document(r: YamlReader, root: YamlNode | None) -> HooksFile:
    if root is None:  # empty, or only comments: no hooks
        return HooksFile(r.source)
    found = r.fields(root, "", "a hooks file", ("version", "hooks"))
    read_version(
        r, root, found, HOOKS_VERSION, reads=f"version: {HOOKS_VERSION} (mig-parted's hooks format)"
    )
    hooks: list[Hook] = []
    ignored: list[str] = []
    if "hooks" in found and not is_null(found["hooks"][1]):
        _, node = found["hooks"]
        for stage, key_node, value_node in r.mapping(node, "hooks", "hooks"):
            path = join_key("hooks", stage)
            if stage not in STAGES:
                mark = key_node.start_mark
                ignored.append(
                    f"{r.source}:{mark.line + 1}:{mark.column + 1}: {path}: unknown hook "
                    f"{shorten(stage)!r}, not run; mig-parted's hooks are {', '.join(STAGES)}"
                )
                continue
            if not is_null(value_node):
                ok, stage_hooks = r.attempt(
                    lambda n=value_node, p=path, s=stage: _read_stage(r, n, p, s)
                )
                hooks.extend(stage_hooks if ok else ())  # type: ignore[arg-type]
    # Stages in migd's order, whatever order the file lists them in.
    hooks.sort(key=lambda h: STAGES.index(h.stage))
    return HooksFile(r.source, tuple(hooks), tuple(ignored))


def _read_stage(r: YamlReader, node: YamlNode, path: str, stage: str) -> list[Hook]:
    hooks: list[Hook] = []
    expected = f"the {stage} hooks must be a list of hooks (- command: …)"
    for i, item in enumerate(r.sequence(node, path, expected)):
        ok, hook = r.attempt(lambda n=item, p=f"{path}[{i}]", i=i: _read_hook(r, n, p, stage, i))
        if ok:
            hooks.append(hook)  # type: ignore[arg-type]
    return hooks


def _read_hook(r: YamlReader, node: YamlNode, path: str, stage: str, position: int) -> Hook:
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
            ok, arg = r.attempt(lambda n=item, p=f"{args_path}[{i}]": read_argument(r, n, p))
            if ok:
                args.append(str(arg))
    envs: list[tuple[str, str]] = []
    if "envs" in found and not is_null(found["envs"][1]):
        envs_path = join_key(path, "envs")
        for name, key_node, value_node in r.mapping(found["envs"][1], envs_path, "envs"):
            if not re.match(_ENV_NAME_RE, name):
                r.report(
                    key_node,
                    join_key(envs_path, name),
                    f"{shorten(name)!r} is not an environment variable name "
                    "(letters, digits and _, not starting with a digit)",
                )
                continue
            value_path = join_key(envs_path, name)
            ok, value = r.attempt(lambda n=value_node, p=value_path: read_argument(r, n, p))
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
