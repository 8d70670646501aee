"""What several verbs share: the config-file and selected-config flags, the reset command.

Defaults come from the same environment variables as mig-parted's (``MIGD_*`` twins
first), so units and scripts written for ``nvidia-mig-parted`` keep working.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from migd.core.config import Config

DEFAULT_CONFIG_FILE = "/etc/migd/config.yaml"
ENV_CONFIG_FILE = ("MIGD_CONFIG_FILE", "MIG_PARTED_CONFIG_FILE")


def env(*names: str) -> str | None:
    """The value of the first of the environment variables ``names`` that is set and not empty."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


# True values of a boolean environment variable (Go's strconv.ParseBool, as mig-parted
# reads them, and the usual yes/on).
TRUE_VALUES = frozenset({"1", "true", "t", "yes", "y", "on"})


def env_flag(*names: str) -> bool:
    """True when the first of the environment variables ``names`` that is set is true."""
    value = env(*names)
    return value is not None and value.strip().lower() in TRUE_VALUES


def add_config_file(parser: argparse.ArgumentParser, *, use: str = "- for standard input") -> None:
    """``-f/--config-file``; ``use`` says what the verb does with it, for the help."""
    parser.add_argument(
        "-f",
        "--config-file",
        dest="config_file",
        metavar="FILE",
        default=env(*ENV_CONFIG_FILE) or DEFAULT_CONFIG_FILE,
        help=f"the config file, {use} (default: $MIGD_CONFIG_FILE, "
        f"$MIG_PARTED_CONFIG_FILE, or {DEFAULT_CONFIG_FILE})",
    )


def add_selected_config(
    parser: argparse.ArgumentParser, *, use: str = "the mig-config to apply"
) -> None:
    """``-c/--selected-config`` (no default: the config file resolves it, ``select_config``)."""
    parser.add_argument(
        "-c",
        "--selected-config",
        dest="selected_config",
        metavar="NAME",
        default=None,
        help=f"{use} (default: $MIGD_SELECTED_CONFIG, $MIG_PARTED_SELECTED_CONFIG, "
        "selected-config: in the file, or the only config)",
    )


def simulated_reset_command(state: str) -> tuple[str, ...]:
    """The reset command of the simulated node in ``state``: ``migd sim reset``.

    The executor runs it like any reset command, so neither it nor the NVML adapter
    knows the node is simulated.
    """
    return (sys.executable, "-m", "migd", "sim", "reset", state, "--bus-id", "{bus_ids}")


def reset_command(args: argparse.Namespace, config: Config | None) -> tuple[str, ...]:
    """The reset command: the simulator's under --simulate, else the config's (or the default)."""
    if getattr(args, "simulate", None):
        return simulated_reset_command(args.simulate)
    if config is not None:
        return config.settings.reset_command
    from migd.core.config import DEFAULT_RESET_COMMAND

    return DEFAULT_RESET_COMMAND
