"""The config file: one YAML file in mig-parted's v1 format, plus migd's additions.

``parse_config`` is pure: bytes in, a ``Config`` (``migd.core.config``) out, or a
``ConfigError`` carrying every problem found, each located by file, line, column and
key path (``mig-configs.all-balanced[1].mig-devices."1g.5gb"``). ``load_config`` is the
thin edge that reads a file under the root-owned file policy (``migd.formats.files``).
The ``settings:`` are read by ``migd.formats.settings``.

mig-parted's rules are kept exactly (reference: mig-parted.md "Config schema"), with
these deliberate differences, each of which turns a silent failure at apply time into
an error before any GPU is touched:

- a ``device-filter`` not of the form ``0xDDDDVVVV[:0xSSSSssss]`` is an error
  (mig-parted silently never matches it);
- a profile name with an unknown attribute or an impossible slice count is an error
  (mig-parted clears the GPU and reports success, issue #18);
- GPU indices must be non-negative and ``mig-enabled`` must be written out.

migd adds ``selected-config:`` and ``settings:`` at the top level, and memory-agnostic
profile names (``3g``) resolved later against each GPU's own profile table.

The YAML is read by the located-YAML reader (``migd.formats.yaml_reader``): every value
keeps its line and column; duplicate keys, deep nesting, recursive aliases and alias
expansion beyond a small bound are refused. Any input yields a Config or a ConfigError.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import BinaryIO

from yaml.nodes import MappingNode, ScalarNode
from yaml.nodes import Node as YamlNode

from migd.core.config import Config, ConfigEntry, DeviceFilter, Settings
from migd.core.profiles import ProfileName, ProfileNameError
from migd.errors import shorten
from migd.formats import CONFIG_VERSION
from migd.formats.files import read_trusted_file, sha256
from migd.formats.settings import read_settings
from migd.formats.yaml_reader import (
    MAX_CONFIG_BYTES,
    InvalidValue,
    YamlReader,
    is_null,
    join_key,
    read_version,
    read_yaml_document,
)

# ---------------------------------------------------------------------------
# Reading a file (the impure edge)
# ---------------------------------------------------------------------------


def load_config(
    path: str,
    *,
    euid: int | None = None,
    enforce_ownership: bool = True,
    stdin: BinaryIO | None = None,
) -> Config:
    """Read and parse a config file (``-`` = standard input).

    When the effective uid (``euid``, default ``os.geteuid()``) is root, a file not owned
    by root or writable by group or others is refused (``migd.formats.files``), unless
    ``enforce_ownership`` is False (``migd validate`` reports it as a warning instead).
    Files over ``MAX_CONFIG_BYTES`` are refused without reading them whole. Every
    failure, an unreadable file included, is a ConfigError.
    """
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        return parse_config(stream.read(MAX_CONFIG_BYTES + 1), path)
    return parse_config(
        read_trusted_file(path, euid=euid, enforce_ownership=enforce_ownership), path
    )


# ---------------------------------------------------------------------------
# Parsing (pure)
# ---------------------------------------------------------------------------


def parse_config(data: bytes, source: str) -> Config:
    """Parse config file bytes; ``source`` names the file in messages.

    Returns a Config or raises ConfigError listing every problem found.
    """
    digest = sha256(data).hexdigest()
    return read_yaml_document(data, source, lambda r, root: _read_document(r, root, digest))


# ---------------------------------------------------------------------------
# The document: version, mig-configs, selected-config, settings
# ---------------------------------------------------------------------------

TOP_LEVEL_KEYS = ("version", "mig-configs", "selected-config", "settings")
ENTRY_KEYS = ("devices", "device-filter", "mig-enabled", "mig-devices")


def _read_document(r: YamlReader, root: YamlNode | None, digest: str) -> Config:
    if root is None or is_null(root):  # empty, only comments, or null: valid, as upstream
        return Config(r.source, (), None, Settings(), digest)
    r.check_tag(root, "")
    if not isinstance(root, MappingNode):
        r.fail(
            root,
            "",
            "a config file must be a YAML mapping starting with 'version: v1' and "
            f"'mig-configs:', not {r.describe(root)}",
        )
    found = r.fields(root, "", "the top level", TOP_LEVEL_KEYS)
    read_version(
        r, root, found, CONFIG_VERSION, reads=f"version: {CONFIG_VERSION} (mig-parted's format)"
    )

    mig_configs: tuple[tuple[str, tuple[ConfigEntry, ...]], ...] = ()
    configs_ok = True
    if "mig-configs" in found:
        _, node = found["mig-configs"]
        configs_ok, value = r.attempt(lambda: _read_mig_configs(r, node, "mig-configs"))
        mig_configs = value if configs_ok else ()  # type: ignore[assignment]

    selected: str | None = None
    if "selected-config" in found:
        _, node = found["selected-config"]
        ok, value = r.attempt(lambda: r.text(node, "selected-config", "selected-config"))
        if ok:
            selected = str(value)
            names = [name for name, _ in mig_configs]
            if configs_ok and selected not in names:
                r.report(
                    node,
                    "selected-config",
                    f"selected mig-config not present: {shorten(selected)!r}; the file "
                    f"defines: {', '.join(names) or 'no mig-configs'}",
                )

    settings = Settings()
    if "settings" in found:
        _, node = found["settings"]
        ok, value = r.attempt(lambda: read_settings(r, node, "settings"))
        if ok:
            assert isinstance(value, Settings)
            settings = value

    return Config(r.source, mig_configs, selected, settings, digest)


def _read_mig_configs(
    r: YamlReader, node: YamlNode, path: str
) -> tuple[tuple[str, tuple[ConfigEntry, ...]], ...]:
    pairs = [] if is_null(node) else r.mapping(node, path, "mig-configs")
    if not pairs:
        r.fail(node, path, "mig-configs is empty; define at least one named config")
    configs: list[tuple[str, tuple[ConfigEntry, ...]]] = []
    valid = True
    for name, key_node, value_node in pairs:
        config_path = join_key(path, name)
        if not name:
            r.report(key_node, config_path, "a config name cannot be empty")
            valid = False
            continue
        ok, entries = r.attempt(lambda n=value_node, p=config_path: _read_entries(r, n, p))
        if ok:
            configs.append((name, entries))  # type: ignore[arg-type]
        valid = valid and ok
    if not valid:
        raise InvalidValue
    return tuple(configs)


def _read_entries(r: YamlReader, node: YamlNode, path: str) -> tuple[ConfigEntry, ...]:
    if is_null(node):
        r.fail(node, path, "this config has no entries; it needs at least one '- devices: …'")
    items = r.sequence(
        node,
        path,
        "a config must be a list of entries, each starting with '- ' (as in '- devices: all')",
    )
    if not items:
        r.fail(node, path, "this config has no entries; it needs at least one '- devices: …'")
    return tuple(r.each(items, path, lambda n, p: _read_entry(r, n, p)))


def _read_entry(r: YamlReader, node: YamlNode, path: str) -> ConfigEntry:
    if is_null(node):
        r.fail(node, path, "this entry is empty; it needs devices: and mig-enabled:")
    before = len(r.problems)
    found = r.fields(node, path, "an entry", ENTRY_KEYS)

    def value_of(key: str, parse: Callable[[YamlReader, YamlNode, str], object]) -> object:
        _, value_node = found[key]
        ok, value = r.attempt(lambda: parse(r, value_node, join_key(path, key)))
        return value if ok else None

    devices: object = None
    if "devices" not in found:
        r.report(
            node,
            path,
            "this entry has no devices:; write 'devices: all' or a list of GPU "
            "indices such as 'devices: [0, 1]'",
        )
    else:
        devices = value_of("devices", _read_devices)

    filters: object = ()
    if "device-filter" in found:
        filters = value_of("device-filter", _read_device_filters)

    enabled: object = None
    if "mig-enabled" not in found:
        r.report(node, path, "this entry has no mig-enabled:; write 'mig-enabled: true' or false")
    else:
        enabled = value_of("mig-enabled", _read_bool)

    mig_devices: object = None  # None: absent or null, as in mig-parted
    if "mig-devices" in found and not is_null(found["mig-devices"][1]):
        mig_devices = value_of("mig-devices", _read_mig_devices)

    if enabled is True and mig_devices is None and "mig-devices" not in found:
        r.report(
            node,
            path,
            "mig-enabled is true but mig-devices is missing; list the instances, or "
            "write 'mig-devices: {}' for MIG mode with no instances",
        )
    elif enabled is True and "mig-devices" in found and is_null(found["mig-devices"][1]):
        r.report(
            found["mig-devices"][1],
            join_key(path, "mig-devices"),
            "mig-devices is empty (null) while mig-enabled is true; list the instances, "
            "or write 'mig-devices: {}' for MIG mode with no instances",
        )
    elif enabled is False and mig_devices:
        r.report(
            found["mig-devices"][0],
            join_key(path, "mig-devices"),
            "mig-devices are listed while mig-enabled is false; remove them or set "
            "mig-enabled: true",
        )

    if len(r.problems) > before:
        raise InvalidValue
    assert isinstance(enabled, bool)
    return ConfigEntry(
        devices=devices,  # type: ignore[arg-type]
        device_filters=filters,  # type: ignore[arg-type]
        mig_enabled=enabled,
        mig_devices=mig_devices or (),  # type: ignore[arg-type]
        path=path,
        line=node.start_mark.line + 1,
        source=r.source,
        column=node.start_mark.column + 1,
    )


def _read_bool(r: YamlReader, node: YamlNode, path: str) -> bool:
    value = r.scalar(node, path)
    if not isinstance(value, bool):
        r.fail(node, path, f"must be true or false (no quotes), not {r.describe(node)}")
    return value


def _read_count(r: YamlReader, node: YamlNode, path: str, what: str) -> int:
    value = r.scalar(node, path)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        r.fail(node, path, f"{what} must be a whole number ≥ 0, not {r.describe(node)}")
    return value


def _read_devices(r: YamlReader, node: YamlNode, path: str) -> str | tuple[int, ...]:
    if isinstance(node, ScalarNode):
        value = r.scalar(node, path)
        if value == "all":
            return "all"
        if isinstance(value, int) and not isinstance(value, bool):
            r.fail(
                node,
                path,
                f"devices must be 'all' or a list, even for one GPU: "
                f"write devices: [{shorten(node.value)}]",
            )
        r.fail(
            node,
            path,
            "devices must be 'all' or a list of GPU indices such as [0, 1], "
            f"not {r.describe(node)}",
        )
    items = r.sequence(node, path, "devices must be 'all' or a list of GPU indices such as [0, 1]")
    return tuple(r.each(items, path, lambda n, p: _read_count(r, n, p, "a GPU index")))


def _read_device_filters(r: YamlReader, node: YamlNode, path: str) -> tuple[DeviceFilter, ...]:
    if isinstance(node, ScalarNode):
        if is_null(node) or r.scalar(node, path) == "":
            return ()  # mig-parted: an empty filter matches every GPU
        return (_read_device_filter(r, node, path),)
    items = r.sequence(
        node, path, 'device-filter must be a PCI id such as "0x233510DE" or a list of them'
    )
    return tuple(r.each(items, path, lambda n, p: _read_device_filter(r, n, p)))


def _read_device_filter(r: YamlReader, node: YamlNode, path: str) -> DeviceFilter:
    value = r.scalar(node, path)
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(node, ScalarNode):
        r.fail(
            node,
            path,
            f'write the PCI id in quotes: "{shorten(node.value)}" (unquoted, YAML reads '
            "it as a number)",
        )
    text = r.text(node, path, "a device-filter")
    try:
        return DeviceFilter.parse(text)
    except ValueError as exc:
        r.fail(node, path, str(exc))


def _read_mig_devices(r: YamlReader, node: YamlNode, path: str) -> tuple[tuple[str, int], ...]:
    pairs = r.mapping(node, path, "mig-devices (profile: count)")
    counts: list[tuple[str, int]] = []
    valid = True
    for name, key_node, value_node in pairs:
        entry_path = join_key(path, name)
        try:
            ProfileName.parse(name)
        except ProfileNameError as exc:
            r.report(key_node, entry_path, str(exc))
            valid = False
        ok, count = r.attempt(
            lambda n=value_node, p=entry_path: _read_count(r, n, p, "an instance count")
        )
        if ok:
            counts.append((name, count))  # type: ignore[arg-type]
        valid = valid and ok
    if not valid:
        raise InvalidValue
    if counts and not any(count for _, count in counts):
        r.fail(
            node,
            path,
            "every count in mig-devices is 0; give at least one profile a count, "
            "or write 'mig-devices: {}' for MIG mode with no instances",
        )
    return tuple(counts)
