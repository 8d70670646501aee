"""The files migd reads and writes, each format parsed in one place.

The located-YAML reader every YAML file goes through (limits, positions, aliases),
the policy for trusting a file as root and for writing one atomically, and one module
per format: the config file and its settings, mig-parted's hooks file, the GPU
Operator's gpu-clients file, the checkpoint, the packaged GPU model tables, and the
configs ``migd export`` writes. Each turns bytes into ``migd.core`` values (or back),
with every problem located by file, line, column and key.

May import: ``migd.errors``, ``migd.core``, PyYAML and the standard library (files).
Never pynvml, subprocess or threading, nor the GPU side, the node, the daemon or the
verbs.
"""

# The config format's version (mig-parted's v1) and the name `migd export` gives the
# config it writes: here rather than in their modules, so that the verbs' flags can
# name them without loading the YAML readers.
CONFIG_VERSION = "v1"
DEFAULT_LABEL = "current"
