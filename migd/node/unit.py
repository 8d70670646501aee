"""migd's systemd unit, and the variant of it ``migd install-unit`` writes.

The unit is written once, in ``systemd/migd.service`` (for ``/usr/bin/migd``, as a
package installs it). This package carries the same file (``migd.service`` here is a
link to it, which a wheel turns into a copy), so that an installed migd (a wheel in a
virtualenv) can write the unit with its own executable's path: :func:`render_unit`
changes only the lines that say where migd is and what it runs against.

Why each directive is there is said beside it, in the unit itself, so that an
operator reading ``systemctl cat migd`` learns it too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from migd.node import UNIT_NAME

DEFAULT_EXECUTABLE = "/usr/bin/migd"
# Directories systemd's ProtectHome= hides; a migd installed below one needs read access.
HOME_DIRECTORIES = ("/home", "/root", "/run/user")


@dataclass(frozen=True)
class UnitOptions:
    """What ``migd install-unit`` puts into the unit besides the shipped text."""

    command: tuple[str, ...] = (DEFAULT_EXECUTABLE,)  # how to run migd
    run_args: tuple[str, ...] = ()  # extra arguments of `migd run` (-f FILE, -c NAME)
    environment: Mapping[str, str] = field(default_factory=dict)
    read_write_paths: tuple[str, ...] = ()  # e.g. the simulated node's directory


def quote(arg: str) -> str:
    """One argument as systemd's command-line and Environment= parsers read it back."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if escaped and not any(c.isspace() or c in "\"'\\;" for c in escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _command_line(argv: Sequence[str]) -> str:
    return " ".join(quote(a) for a in argv)


def needs_home(paths: Sequence[str]) -> bool:
    """Whether any of ``paths`` lies below a directory ProtectHome=yes would hide."""
    for path in paths:
        real = os.path.realpath(path)
        for home in HOME_DIRECTORIES:
            if any(p == home or p.startswith(home + "/") for p in (path, real)):
                return True
    return False


def shipped_unit() -> str:
    """The unit as shipped: ``systemd/migd.service``, for ``/usr/bin/migd``."""
    return resources.files(__package__).joinpath(UNIT_NAME).read_text(encoding="utf-8")


def render_unit(options: UnitOptions, *, home_paths: Sequence[str] = ()) -> str:
    """The shipped unit for this installation. ``home_paths`` are files migd needs that
    may lie in home directories (its executable, the interpreter, the config): if one
    does, ProtectHome= becomes read-only instead of hiding them.

    ``ExecStart=`` and ``ExecReload=`` name ``options.command``; ``Environment=`` lines
    follow ``ExecReload=``; extra ``ReadWritePaths=`` follow the shipped one. The default
    options give the shipped unit back unchanged.
    """
    environment = [
        f"Environment={quote(f'{name}={value}')}\n" for name, value in options.environment.items()
    ]
    read_write = [f"ReadWritePaths={quote(p)}\n" for p in options.read_write_paths]
    lines = []
    for line in shipped_unit().splitlines(keepends=True):
        key = line.partition("=")[0]
        if key == "ExecStart":
            line = f"ExecStart={_command_line([*options.command, 'run', *options.run_args])}\n"
        elif key == "ExecReload":
            line = f"ExecReload={_command_line([*options.command, 'reload'])}\n"
        elif key == "ProtectHome":
            line = f"ProtectHome={'read-only' if needs_home(home_paths) else 'yes'}\n"
        lines.append(line)
        if key == "ExecReload":
            lines += environment
        elif key == "ReadWritePaths":
            lines += read_write
    return "".join(lines)
