"""The GPU Operator's gpu-clients file (``clients.yaml``), read unchanged::

    version: v1
    systemd-services:
      - kubelet.service
      - nvidia-dcgm.service

It names the host units that use the GPUs, which migd stops around a change and
starts again (``migd.node.change``). Parsed here and nowhere else, through the
located-YAML reader.
"""

from __future__ import annotations

from yaml.nodes import Node as YamlNode

from migd.formats.files import read_trusted_file
from migd.formats.yaml_reader import (
    YamlReader,
    is_null,
    read_units,
    read_version,
    read_yaml_document,
)

CLIENTS_VERSION = "v1"
CLIENTS_KEYS = ("version", "systemd-services")


def parse_clients_file(data: bytes, source: str) -> tuple[str, ...]:
    """The unit names of a gpu-clients file (``clients.yaml``); ConfigError otherwise."""
    return read_yaml_document(data, source, _read_clients_document)


def load_clients_file(path: str, *, euid: int | None = None) -> tuple[str, ...]:
    """Read and parse the gpu-clients file at ``path`` under the root file policy."""
    return parse_clients_file(read_trusted_file(path, euid=euid), path)


def _read_clients_document(r: YamlReader, root: YamlNode | None) -> tuple[str, ...]:
    if root is None:
        return ()
    found = r.fields(root, "", "a gpu-clients file", CLIENTS_KEYS)
    read_version(
        r,
        root,
        found,
        CLIENTS_VERSION,
        reads=f"the GPU Operator's gpu-clients format, version: {CLIENTS_VERSION}",
    )
    if "systemd-services" not in found or is_null(found["systemd-services"][1]):
        return ()
    _, node = found["systemd-services"]
    return read_units(r, node, "systemd-services")
