"""The config language's values: what a valid config file says, as plain values.

A :class:`Config` holds the named configs (mig-parted's ``mig-configs``), each a list
of :class:`ConfigEntry` (which GPUs it covers, the layout they get), the
``selected-config`` and the daemon's :class:`Settings`, every one with its default.
``select_config`` picks the config this node applies. Reading a file into these
values is ``migd.formats.config_file``'s job; resolving an entry's profile names
against a GPU is selection's (``migd.core.selection``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from migd.errors import ConfigError

ENV_SELECTED_CONFIG = ("MIGD_SELECTED_CONFIG", "MIG_PARTED_SELECTED_CONFIG")

# ---------------------------------------------------------------------------
# The values a config yields
# ---------------------------------------------------------------------------

_FILTER_RE = r"^0[xX]([0-9A-Fa-f]{8})(?::0[xX]([0-9A-Fa-f]{8}))?$"


@dataclass(frozen=True)
class DeviceFilter:
    """A ``device-filter`` element: a PCI device+vendor id, optionally a subsystem id.

    Both ids are packed as NVML reports them: ``(device << 16) | vendor``, e.g.
    ``0x233510DE`` for an H200. Without a subsystem only device and vendor compare.
    """

    device_id: int
    subsystem_id: int | None = None

    @classmethod
    def parse(cls, text: str) -> DeviceFilter:
        """Parse ``0xDDDDVVVV`` or ``0xDDDDVVVV:0xSSSSssss`` (hex, any case).

        Raises ValueError, with a message an operator can act on, for anything else.
        """
        m = re.match(_FILTER_RE, text)
        if not m:
            raise ValueError(
                f"device-filter {text!r} is not a PCI id of the form 0xDDDDVVVV or "
                "0xDDDDVVVV:0xSSSSssss (device, vendor, subsystem in hex, e.g. 0x233510DE "
                "for an H200); mig-parted would silently never match it"
            )
        sub = m.group(2)
        return cls(int(m.group(1), 16), int(sub, 16) if sub is not None else None)

    def matches(self, pci_device_id: int, pci_subsystem_id: int) -> bool:
        if pci_device_id != self.device_id:
            return False
        return self.subsystem_id is None or pci_subsystem_id == self.subsystem_id

    def __str__(self) -> str:
        text = f"0x{self.device_id:08X}"
        if self.subsystem_id is not None:
            text += f":0x{self.subsystem_id:08X}"
        return text


@dataclass(frozen=True)
class ConfigEntry:
    """One entry of a named config: which GPUs it covers and the layout they get.

    Entries may overlap; for a GPU matched by several, the last one wins.
    """

    devices: str | tuple[int, ...]  # "all" or NVML indices
    device_filters: tuple[DeviceFilter, ...]  # empty = every GPU
    mig_enabled: bool
    mig_devices: tuple[tuple[str, int], ...]  # profile name as written -> count, file order
    path: str  # key path, e.g. mig-configs.all-balanced[1]
    line: int
    source: str = ""  # the file it was read from, for messages
    column: int = 1

    def matches(self, index: int, pci_device_id: int, pci_subsystem_id: int) -> bool:
        """True when this entry covers the GPU at NVML ``index`` with these PCI ids."""
        if self.devices != "all" and index not in self.devices:
            return False
        if not self.device_filters:
            return True
        return any(f.matches(pci_device_id, pci_subsystem_id) for f in self.device_filters)


DriftPolicy = Literal["repair", "report"]
BootPolicy = Literal["continue", "strict"]
DevicePluginStrategy = Literal["none", "single", "mixed"]

DEFAULT_METRICS_ADDRESS = "127.0.0.1:9402"
DEFAULT_RESET_COMMAND = ("nvidia-smi", "-r", "-i", "{bus_ids}")
# Placeholders migd fills in the reset command (comma-separated PCI bus ids).
RESET_COMMAND_PLACEHOLDERS = frozenset({"bus_ids"})
# How long the reset command may run. Longer than a hook's limit: resetting GPUs
# behind an NVSwitch fabric takes minutes on real hardware.
DEFAULT_RESET_TIMEOUT = 300.0


@dataclass(frozen=True)
class TlsSettings:
    """TLS for the metrics endpoint; a client CA file means client certificates are required."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    @property
    def client_certs_required(self) -> bool:
        return self.client_ca_file is not None


@dataclass(frozen=True)
class MetricsSettings:
    """The Prometheus endpoint. ``address`` is None when the endpoint is disabled."""

    address: str | None = DEFAULT_METRICS_ADDRESS
    tls: TlsSettings | None = None


@dataclass(frozen=True)
class DriftCheckSettings:
    """How often the daemon compares the GPUs with the config (0 = never), and what it does.

    A GPU that drifts again after ``max_repairs`` repairs within ``window`` seconds is
    *contested*: something else keeps changing it, and migd stops repairing it until a
    reload or a config edit (``max_repairs`` 0: it repairs forever).
    """

    interval: float = 60.0
    policy: DriftPolicy = "repair"
    max_repairs: int = 3
    window: float = 900.0


@dataclass(frozen=True)
class RetrySettings:
    """Exponential backoff, in seconds, after a failed reconcile."""

    initial: float = 5.0
    max: float = 300.0


@dataclass(frozen=True)
class GpuClientsSettings:
    """Host units that use the GPUs, stopped around a reconfiguration.

    ``file`` is a GPU Operator ``clients.yaml`` naming more of them.
    """

    units: tuple[str, ...] = ()
    file: str | None = None


@dataclass(frozen=True)
class DevicePluginSettings:
    """The Kubernetes device plugin's MIG strategy and the units to restart after a change."""

    strategy: DevicePluginStrategy = "mixed"
    units: tuple[str, ...] = ()


@dataclass(frozen=True)
class NfdSettings:
    """Where to write node-feature-discovery labels; None = do not write them."""

    path: str | None = None


@dataclass(frozen=True)
class Settings:
    """The daemon's settings (``settings:``); every field has a default."""

    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    drift_check: DriftCheckSettings = field(default_factory=DriftCheckSettings)
    boot_policy: BootPolicy = "continue"
    retry: RetrySettings = field(default_factory=RetrySettings)
    reset_command: tuple[str, ...] = DEFAULT_RESET_COMMAND
    reset_timeout: float = DEFAULT_RESET_TIMEOUT
    command_timeout: float = 120.0
    hooks_file: str | None = None
    gpu_clients: GpuClientsSettings = field(default_factory=GpuClientsSettings)
    device_plugin: DevicePluginSettings = field(default_factory=DevicePluginSettings)
    cdi_refresh_command: tuple[str, ...] | None = None
    mig_caps_command: tuple[str, ...] | None = None
    nfd: NfdSettings = field(default_factory=NfdSettings)


@dataclass(frozen=True)
class Config:
    """A parsed, valid config file."""

    source: str  # file name as given ('-' for stdin)
    mig_configs: tuple[tuple[str, tuple[ConfigEntry, ...]], ...]  # name -> entries, file order
    selected_config: str | None
    settings: Settings
    digest: str  # sha256 hex of the file bytes

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.mig_configs)

    def entries(self, name: str) -> tuple[ConfigEntry, ...]:
        """The entries of the named config; KeyError if the file has no such config."""
        for config_name, entries in self.mig_configs:
            if config_name == name:
                return entries
        raise KeyError(name)


# ---------------------------------------------------------------------------
# The metrics address
# ---------------------------------------------------------------------------


def split_listen_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6]:PORT`` into host and port; ValueError says what is wrong."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        if not sep:
            raise ValueError(f"{address!r}: write an IPv6 address as [ADDRESS]:PORT")
        import ipaddress  # only for an IPv6 address: rare, and a slow import

        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{address!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port = address.rpartition(":")
        if not sep:
            raise ValueError(f"{address!r} has no port; write HOST:PORT, e.g. 127.0.0.1:9402")
        if ":" in host:
            raise ValueError(f"{address!r}: write an IPv6 address in brackets, e.g. [::1]:9402")
        if not host:
            raise ValueError(
                f"{address!r} has no host; write 0.0.0.0:{port} or [::]:{port} "
                "to listen on every interface"
            )
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ValueError(f"{address!r}: {host!r} is not a host name or IPv4 address")
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r}: the port must be a number from 1 to 65535")
    return host, int(port)


# ---------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The selected config's name and where the choice came from (for messages)."""

    name: str
    origin: str


def find_selection(
    config: Config, cli_name: str | None, environ: Mapping[str, str]
) -> Selection | None:
    """The selected config, or None when nothing selects one and the file has several.

    Order: ``cli_name`` (``-c``), ``MIGD_SELECTED_CONFIG``, ``MIG_PARTED_SELECTED_CONFIG``,
    ``selected-config:`` in the file, the only config if there is exactly one. An empty
    value counts as unset (systemd drop-ins clear a variable with ``VAR=``). A name the
    file does not define raises ConfigError.
    """
    requested = [("--selected-config", cli_name)]
    requested += [(var, environ.get(var)) for var in ENV_SELECTED_CONFIG]
    for origin, name in requested:
        if name:
            if name not in config.names:
                available = ", ".join(config.names) or "none"
                raise ConfigError.of_file(
                    config.source,
                    f"selected mig-config not present: {name!r} (from {origin}); "
                    f"the file defines: {available}",
                )
            return Selection(name, origin)
    if config.selected_config is not None:
        return Selection(config.selected_config, "selected-config in the file")
    if len(config.names) == 1:
        return Selection(config.names[0], "the only mig-config in the file")
    return None


def select_config(config: Config, cli_name: str | None, environ: Mapping[str, str]) -> str:
    """The name of the config this node applies; ConfigError when none can be chosen."""
    selection = find_selection(config, cli_name, environ)
    if selection is not None:
        return selection.name
    if not config.names:
        message = "no mig-config to select: the file defines no mig-configs"
    else:
        message = (
            f"no mig-config selected: the file defines {len(config.names)} "
            f"({', '.join(config.names)}); choose one with -c NAME, "
            "MIGD_SELECTED_CONFIG, or selected-config: in the file"
        )
    raise ConfigError.of_file(config.source, message)
