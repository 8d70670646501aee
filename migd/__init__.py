"""migd: a systemd daemon that owns the NVIDIA MIG geometry of a GPU node."""

__version__ = "0.1.0"
