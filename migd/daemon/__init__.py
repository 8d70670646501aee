"""The daemon behind ``migd run``: one loop that acts, and what it tells the world.

The loop (events, jobs, timers), the view it publishes and the observer protocol,
the runtime directory behind ``migd status`` and ``migd reload``, sd_notify, the
config-file watcher, and the Prometheus metrics with their HTTP endpoint.

May import: ``migd.errors``, ``migd.command``, ``migd.core``, ``migd.formats``,
``migd.gpu`` and ``migd.node``. Never the verbs or the simulator.
"""

from collections.abc import Mapping

# Where the daemon keeps its runtime directory: here rather than in
# ``migd.daemon.runtime``, so that the verbs' flags can name it without loading the
# daemon.
DEFAULT_RUNTIME_DIR = "/run/migd"
RUNTIME_DIR_ENV = "MIGD_RUNTIME_DIR"


def default_runtime_dir(environ: Mapping[str, str]) -> str:
    return environ.get(RUNTIME_DIR_ENV) or DEFAULT_RUNTIME_DIR
