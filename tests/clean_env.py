"""The environment a migd process is started with by the tests and the benchmarks.

Every variable that changes how a migd process behaves is cleared (its own, the
mig-parted ones it honours, and what systemd hands a service), so the process
behaves as its own files and arguments ask, whatever the caller's environment holds.
The benchmarks find this folder on the path ``bench/__init__.py`` gives them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from migd.commands.common import ENV_CONFIG_FILE

BEHAVIOUR_ENVIRONMENT = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "INVOCATION_ID",
    "MIGD_SIMULATE",
    *ENV_CONFIG_FILE,
    "MIGD_SELECTED_CONFIG",
    "MIG_PARTED_SELECTED_CONFIG",
    "MIG_PARTED_HOOKS_FILE",
    "MIG_PARTED_SKIP_RESET",
    "MIG_PARTED_MODE_CHANGE_ONLY",
    "MIG_PARTED_VALID_CONFIG",
    "MIG_PARTED_DEBUG",
    "MIG_PARTED_CHECKPOINT_FILE",
    "MIGD_RUNTIME_DIR",
    "MIGD_BOOT_POLICY",
)


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``BEHAVIOUR_ENVIRONMENT``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in BEHAVIOUR_ENVIRONMENT}
    env.update(extra or {})
    return env
