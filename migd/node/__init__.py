"""The node around the GPUs: what migd keeps consistent with them around a change.

The change orchestrator (hooks, GPU client units, refreshes, NFD labels around one
change), running mig-parted's hooks, the node-feature-discovery labels, the device
plugin's strategy check and the systemd unit migd installs.

May import: ``migd.errors``, ``migd.command``, ``migd.core``, ``migd.formats`` and
``migd.gpu``. Never the daemon or the verbs.
"""

# The unit's name: here rather than in ``migd.node.unit``, so that the verbs' flags can
# name it without loading the unit file.
UNIT_NAME = "migd.service"

# The node lock's place and how long a change waits for it (``migd.node.lock``): here,
# so that the verbs' flags can name them without loading the lock's code.
DEFAULT_NODE_LOCK = "/run/migd/node.lock"
NODE_LOCK_ENV = "MIGD_NODE_LOCK"
DEFAULT_WAIT_SECONDS = 60.0
