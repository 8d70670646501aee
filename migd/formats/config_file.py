"""The config language: one YAML file in mig-parted's v1 format, plus migd's additions.

``parse_config`` is pure: bytes in, a ``Config`` out, or a ``ConfigError`` carrying
every problem found, each located by file, line, column and key path
(``mig-configs.all-balanced[1].mig-devices."1g.5gb"``). ``load_config`` is the thin
edge that reads a file and applies the root-owned file policy (``migd.formats.files``).
``select_config`` picks the config this node applies.

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

The YAML is read with PyYAML's safe loader composing nodes (so every value keeps its
line and column), with duplicate keys, deep nesting, recursive aliases and alias
expansion beyond a small bound refused. Any input yields a Config or a ConfigError.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import math
import os
import re
import string
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, NoReturn, TypeVar

import yaml
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from migd.core.layout import ProfileName, ProfileNameError
from migd.errors import ConfigError, Problem
from migd.formats import files as fileperm

# ---------------------------------------------------------------------------
# Limits of the loader (the file is read by a root daemon: bound everything)
# ---------------------------------------------------------------------------

MAX_CONFIG_BYTES = 1 << 20
# Far deeper than the schema (about six levels) and far shallower than Python's stack.
MAX_YAML_DEPTH = 64
# Nodes that aliases may add over those written in the file; a few shared layouts
# need a few hundred, a "billion laughs" document needs billions.
MAX_ALIAS_EXPANSION = 10_000
# Problems reported for one file; past this the first ones are what to fix.
MAX_PROBLEMS = 100
# Durations longer than a week are typos (and overflow some timer APIs).
MAX_DURATION_SECONDS = 7 * 24 * 3600.0

CONFIG_VERSION = "v1"
ENV_SELECTED_CONFIG = ("MIGD_SELECTED_CONFIG", "MIG_PARTED_SELECTED_CONFIG")

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"

T = TypeVar("T")


# ---------------------------------------------------------------------------
# The values a config yields
# ---------------------------------------------------------------------------

_FILTER_RE = re.compile(r"^0[xX]([0-9A-Fa-f]{8})(?::0[xX]([0-9A-Fa-f]{8}))?$")


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
        m = _FILTER_RE.match(text)
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
    """How often the daemon compares the GPUs with the config (0 = never), and what it does."""

    interval: float = 60.0
    policy: DriftPolicy = "repair"


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


def read_trusted_file(
    path: str, *, euid: int | None = None, enforce_ownership: bool = True
) -> bytes:
    """The bytes of a file migd acts on (at most ``MAX_CONFIG_BYTES`` + 1 of them).

    As root (``euid``, default ``os.geteuid()``), a file anyone but root could have
    written is refused (``migd.formats.files``) unless ``enforce_ownership`` is False. Every
    failure is a ConfigError naming the file.
    """
    try:
        with open(path, "rb") as f:
            if enforce_ownership:
                # fstat of the open file: the file checked is the file read.
                reason = _untrusted_reason(os.fstat(f.fileno()), path, euid)
                if reason is not None:
                    raise ConfigError.of_file(path, f"refusing this file as root: {reason}")
            return f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError.of_file(path, f"cannot read the file: {exc.strerror or exc}") from None


def ownership_warning(path: str, *, euid: int | None = None) -> str | None:
    """Why a root migd would refuse the file at ``path``, or None (also when unreadable)."""
    if path == "-":
        return None
    try:
        return _untrusted_reason(os.stat(path), path, euid)
    except OSError:
        return None


def _untrusted_reason(st: os.stat_result, path: str, euid: int | None) -> str | None:
    if not fileperm.policy_applies(os.geteuid() if euid is None else euid):
        return None
    return fileperm.untrusted_reason(st.st_uid, st.st_mode, path)


# ---------------------------------------------------------------------------
# Parsing (pure)
# ---------------------------------------------------------------------------


def parse_config(data: bytes, source: str) -> Config:
    """Parse config file bytes; ``source`` names the file in messages.

    Returns a Config or raises ConfigError listing every problem found.
    """
    digest = hashlib.sha256(data).hexdigest()
    return read_yaml_document(data, source, lambda r, root: _read_document(r, root, digest))


def read_yaml_document(data: bytes, source: str, read: Callable[[YamlReader, Node | None], T]) -> T:
    """Parse YAML bytes safely and hand the root node (None if empty) to ``read``.

    Every YAML file migd reads goes through here, so all get the same limits (size,
    depth, aliases), encodings and located messages. ``read`` reports problems on the
    reader and may raise ``InvalidValue`` for a value it cannot use. Raises ConfigError
    listing every problem found (at most ``MAX_PROBLEMS``).
    """

    def fail(line: int | None, column: int | None, message: str) -> NoReturn:
        raise ConfigError.of_file(source, message, line, column)

    if len(data) > MAX_CONFIG_BYTES:
        fail(
            None,
            None,
            f"the file is larger than {MAX_CONFIG_BYTES // 1024} KiB; "
            "migd refuses files that large (is it the right file?)",
        )
    text = _decode(data, source)
    loader: _ComposingLoader | None = None
    try:
        try:
            # PyYAML checks for unprintable characters as the loader is made.
            loader = _ComposingLoader(text)
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
            fail(line, column, _yaml_error_message(exc))
        except yaml.reader.ReaderError as exc:
            line, column = _line_column(text, exc.position)
            fail(
                line,
                column,
                f"the file contains the control character U+{exc.character:04X}, "
                "which YAML does not allow",
            )
        except _PARSER_FAILURES as exc:
            # PyYAML lets some malformed input escape as plain Python errors
            # (a "\U00110000" escape raises ValueError from chr()).
            mark = loader.get_mark() if loader is not None else None
            line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
            fail(line, column, f"invalid YAML: the parser stopped here ({exc})")
        if root is not None:
            _check_aliases(root, source)
        reader = YamlReader(source, loader)
        ok, value = reader.attempt(lambda: read(reader, root))
    finally:
        if loader is not None:
            loader.dispose()
    if reader.problems:
        found = sorted(reader.problems, key=lambda p: (p.line or 0, p.column or 0))
        if len(found) > MAX_PROBLEMS:
            more = len(found) - MAX_PROBLEMS
            found = [*found[:MAX_PROBLEMS], Problem(source, None, None, "", f"… and {more} more")]
        raise ConfigError(found)
    assert ok, "a read that gave up has reported why"
    return value  # type: ignore[return-value]


# What PyYAML raises, besides YAMLError, on input it cannot read.
_PARSER_FAILURES = (ValueError, OverflowError, TypeError, IndexError, KeyError)


def _decode(data: bytes, source: str) -> str:
    """UTF-8 (with or without BOM) or BOM-marked UTF-16, as YAML allows; else ConfigError."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    elif b"\x00" not in data:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            raise ConfigError.of_file(
                source,
                f"the file is not UTF-8 text (byte 0x{data[exc.start]:02X} cannot "
                "start or continue a character here); save it as UTF-8",
                line,
                column,
            ) from None
    raise ConfigError.of_file(
        source, "this is a binary file, not a YAML text file (it contains NUL bytes)"
    )


def _line_column(text: str, position: int) -> tuple[int, int]:
    line = text.count("\n", 0, position) + 1
    return line, position - (text.rfind("\n", 0, position) + 1) + 1


def _yaml_error_message(exc: yaml.MarkedYAMLError) -> str:
    context = exc.context
    mark, problem_mark = exc.context_mark, exc.problem_mark
    if context and mark and problem_mark and mark.line != problem_mark.line:
        context += f" (begun on line {mark.line + 1})"
    parts = [p for p in (context, exc.problem) if p]
    message = "invalid YAML: " + ", ".join(parts)
    if exc.problem and "'\\t'" in exc.problem:
        message += " (YAML does not allow tabs for indentation; use spaces)"
    return message


class _ComposingLoader(yaml.SafeLoader):
    """PyYAML's safe loader, used only to compose nodes, refusing deep nesting.

    The composer is recursive; without a bound a file of ten thousand ``[`` would
    exhaust Python's stack instead of producing a message.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: object) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"the document is nested more than {MAX_YAML_DEPTH} levels deep",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_aliases(root: Node, source: str) -> None:
    """Refuse recursive aliases and alias expansion beyond MAX_ALIAS_EXPANSION nodes.

    Composed nodes share aliased subtrees, so the graph stays small; this computes the
    size of the tree it stands for without building it (iteratively, as the graph may
    be deep through aliases).
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                # Aliases are not nodes: the closest position is the node holding one.
                mark = node.start_mark
                raise ConfigError.of_file(
                    source,
                    "an alias refers to a node that contains it (a recursive alias); "
                    "migd cannot read an infinite document",
                    mark.line + 1,
                    mark.column + 1,
                )
            if id(child) not in sizes:
                stack.append((child, False))
    added = sizes[id(root)] - len(sizes)
    if added > MAX_ALIAS_EXPANSION:
        raise ConfigError.of_file(
            source,
            f"aliases (*name) expand this document by {added} nodes; migd refuses "
            f"more than {MAX_ALIAS_EXPANSION} (an alias bomb?)",
        )


# ---------------------------------------------------------------------------
# Walking the node tree: the pieces every YAML format of migd is read with
# (this config, mig-parted's hooks file, the GPU Operator's gpu-clients file)
# ---------------------------------------------------------------------------


class InvalidValue(Exception):
    """A value was invalid and its problems are already recorded; unwind that value."""


def join_key(path: str, key: str) -> str:
    """Append a key to a key path, quoting keys that are not plain words.

    JSON's quoting escapes newlines too, so a problem always stays on one line.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
        key = json.dumps(key, ensure_ascii=False)
    return f"{path}.{key}" if path else key


def _index(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _unsupported_tag(node: Node) -> str:
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    return f"the YAML tag {shorten(tag)} is not supported here (migd reads plain YAML only)"


def is_null(node: Node) -> bool:
    """Whether a node is YAML's null (``~``, ``null``, or nothing after the colon)."""
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def shorten(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, so a message stays short."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class YamlReader:
    """The state of reading one document: the problems found so far."""

    def __init__(self, source: str, loader: _ComposingLoader) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self._loader = loader

    def report(self, node: Node, path: str, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(self.source, mark.line + 1, mark.column + 1, path, message))

    def fail(self, node: Node, path: str, message: str) -> NoReturn:
        self.report(node, path, message)
        raise InvalidValue

    def attempt(self, parse: Callable[[], object]) -> tuple[bool, object]:
        """Run one value's parse; ``(False, None)`` when it was invalid (already reported)."""
        try:
            return True, parse()
        except InvalidValue:
            return False, None

    def _construct(self, node: ScalarNode) -> object:
        """The value yaml.safe_load would build; YAMLError or a _PARSER_FAILURES if none."""
        return self._loader.construct_object(node)

    def check_tag(self, node: Node, path: str) -> None:
        """Refuse tagged lists and mappings (``!!python/…``, ``!!set``): plain YAML only."""
        if isinstance(node, (SequenceNode, MappingNode)) and node.tag not in (_SEQ_TAG, _MAP_TAG):
            self.fail(node, path, _unsupported_tag(node))

    def scalar(self, node: Node, path: str) -> object:
        """The Python value of a scalar node (as yaml.safe_load would build it).

        A list or mapping is returned as its node, for callers to describe.
        """
        self.check_tag(node, path)
        if not isinstance(node, ScalarNode):
            return node
        try:
            return self._construct(node)
        except yaml.MarkedYAMLError as exc:
            self.fail(node, path, f"cannot read this value: {exc.problem}")
        except (yaml.YAMLError, *_PARSER_FAILURES):
            self.fail(node, path, f"cannot read the value {shorten(node.value)!r}")

    def describe(self, node: Node) -> str:
        """What a node holds, for messages: 'a list', 'the number 7', …"""
        if isinstance(node, SequenceNode):
            return "a list"
        if isinstance(node, MappingNode):
            return "a mapping"
        try:
            value = self._construct(node)
        except (yaml.YAMLError, *_PARSER_FAILURES):
            return repr(shorten(node.value))
        if value is None:
            return "nothing (null)"
        if isinstance(value, bool):
            return f"the boolean {node.value}"
        if isinstance(value, (int, float)):
            return f"the number {shorten(node.value)}"
        if isinstance(value, str):
            return f"the text {shorten(value)!r}"
        return f"{shorten(node.value)!r} (read by YAML as a {type(value).__name__})"

    def text(self, node: Node, path: str, what: str) -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str):
            self.fail(node, path, f"{what} must be text, not {self.describe(node)}")
        return value

    def sequence(self, node: Node, path: str, expected: str) -> list[Node]:
        """The items of a list; else ``expected`` (a phrase saying what belongs here)."""
        self.check_tag(node, path)
        if not isinstance(node, SequenceNode):
            self.fail(node, path, f"{expected}, not {self.describe(node)}")
        return list(node.value)

    def each(self, items: Sequence[Node], path: str, read: Callable[[Node, str], T]) -> list[T]:
        """``read(item, "path[i]")`` for every item of a list, in order.

        Every item is read, so each bad one is reported; then InvalidValue if any was.
        """
        values: list[T] = []
        valid = True
        for i, item in enumerate(items):
            item_path = _index(path, i)
            ok, value = self.attempt(lambda n=item, p=item_path: read(n, p))
            if ok:
                values.append(value)  # type: ignore[arg-type]
            valid = valid and ok
        if not valid:
            raise InvalidValue
        return values

    def mapping(self, node: Node, path: str, what: str) -> list[tuple[str, Node, Node]]:
        """The ``(key, key node, value node)`` pairs of a mapping, merges applied.

        Duplicate keys are reported (YAML would silently keep the last one). Keys are
        taken as written, so ``7:`` and ``"7":`` are the same key, as in mig-parted.
        """
        self.check_tag(node, path)
        if not isinstance(node, MappingNode):
            self.fail(
                node,
                path,
                f"{what} must be a mapping of 'key: value' lines, not {self.describe(node)}",
            )
        own: dict[str, tuple[Node, Node]] = {}
        merged: list[tuple[str, Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.extend(self._merge_sources(value_node, path))
                continue
            if not isinstance(key_node, ScalarNode):
                self.report(key_node, path, "a key must be a plain name, not a list or mapping")
                continue
            key = key_node.value
            if key in own:
                first = own[key][0].start_mark.line + 1
                self.report(
                    key_node,
                    join_key(path, key),
                    f"duplicate key {key!r} (already set on line {first}); "
                    "YAML would silently keep only the last one",
                )
                continue
            own[key] = (key_node, value_node)
        pairs = [(key, k, v) for key, (k, v) in own.items()]
        seen = set(own)
        # Keys written in the mapping override merged ones; earlier merge sources win.
        for key, key_node, value_node in merged:
            if key not in seen:
                seen.add(key)
                pairs.append((key, key_node, value_node))
        return pairs

    def _merge_sources(self, node: Node, path: str) -> list[tuple[str, Node, Node]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        pairs: list[tuple[str, Node, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                self.fail(source, path, "'<<' merges mappings only (e.g. <<: *defaults)")
            pairs.extend(self.mapping(source, path, "a merged mapping"))
        return pairs

    def fields(
        self, node: Node, path: str, what: str, allowed: Collection[str]
    ) -> dict[str, tuple[Node, Node]]:
        """A mapping whose keys must be among ``allowed``; unknown keys are reported."""
        found: dict[str, tuple[Node, Node]] = {}
        for key, key_node, value_node in self.mapping(node, path, what):
            if key in allowed:
                found[key] = (key_node, value_node)
                continue
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.report(
                key_node,
                join_key(path, key),
                f"unknown key {shorten(key)!r} in {what}; {hint}allowed keys: {', '.join(allowed)}",
            )
        return found


def read_version(
    r: YamlReader,
    root: Node,
    found: Mapping[str, tuple[Node, Node]],
    expected: str,
    *,
    reads: str,
) -> None:
    """Check the ``version:`` of a document whose top-level keys ``r.fields`` found.

    ``reads`` completes "migd reads …" in the message for another version.
    """
    if "version" not in found:
        r.report(root, "", f"version is missing; the file must start with 'version: {expected}'")
        return
    _, node = found["version"]
    ok, version = r.attempt(lambda: r.scalar(node, "version"))
    if ok and version != expected:
        r.report(
            node,
            "version",
            f"unknown version {shorten(str(node.value))!r}; migd reads {reads}",
        )


# ---------------------------------------------------------------------------
# The document: version, mig-configs, selected-config, settings
# ---------------------------------------------------------------------------

TOP_LEVEL_KEYS = ("version", "mig-configs", "selected-config", "settings")
ENTRY_KEYS = ("devices", "device-filter", "mig-enabled", "mig-devices")


def _read_document(r: YamlReader, root: Node | None, digest: str) -> Config:
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
        ok, value = r.attempt(lambda: _read_settings(r, node, "settings"))
        if ok:
            assert isinstance(value, Settings)
            settings = value

    return Config(r.source, mig_configs, selected, settings, digest)


def _read_mig_configs(
    r: YamlReader, node: Node, path: str
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


def _read_entries(r: YamlReader, node: Node, path: str) -> tuple[ConfigEntry, ...]:
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


def _read_entry(r: YamlReader, node: Node, path: str) -> ConfigEntry:
    if is_null(node):
        r.fail(node, path, "this entry is empty; it needs devices: and mig-enabled:")
    before = len(r.problems)
    found = r.fields(node, path, "an entry", ENTRY_KEYS)

    def value_of(key: str, parse: Callable[[YamlReader, Node, str], object]) -> object:
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


def _read_bool(r: YamlReader, node: Node, path: str) -> bool:
    value = r.scalar(node, path)
    if not isinstance(value, bool):
        r.fail(node, path, f"must be true or false (no quotes), not {r.describe(node)}")
    return value


def _read_count(r: YamlReader, node: Node, path: str, what: str) -> int:
    value = r.scalar(node, path)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        r.fail(node, path, f"{what} must be a whole number ≥ 0, not {r.describe(node)}")
    return value


def _read_devices(r: YamlReader, node: Node, path: str) -> str | tuple[int, ...]:
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


def _read_device_filters(r: YamlReader, node: Node, path: str) -> tuple[DeviceFilter, ...]:
    if isinstance(node, ScalarNode):
        if is_null(node) or r.scalar(node, path) == "":
            return ()  # mig-parted: an empty filter matches every GPU
        return (_read_device_filter(r, node, path),)
    items = r.sequence(
        node, path, 'device-filter must be a PCI id such as "0x233510DE" or a list of them'
    )
    return tuple(r.each(items, path, lambda n, p: _read_device_filter(r, n, p)))


def _read_device_filter(r: YamlReader, node: Node, path: str) -> DeviceFilter:
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


def _read_mig_devices(r: YamlReader, node: Node, path: str) -> tuple[tuple[str, int], ...]:
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


# ---------------------------------------------------------------------------
# settings:
# ---------------------------------------------------------------------------

_Parse = Callable[[YamlReader, Node, str], object]


@dataclass(frozen=True)
class _Field:
    """One settings key: the dataclass attribute it fills and how its value is read.

    A null value normally means "the default"; ``null_means_default=False`` hands the
    null to the parser instead (``address: null`` disables the endpoint).
    """

    attr: str
    parse: _Parse
    null_means_default: bool = True


def _record(
    r: YamlReader,
    node: Node,
    path: str,
    *,
    what: str,
    cls: type,
    fields: Mapping[str, _Field],
    required: Sequence[str] = (),
) -> object:
    """Read a settings mapping into the frozen dataclass ``cls`` (null = all defaults)."""
    if is_null(node):
        if required:
            r.fail(node, path, f"{what} needs {' and '.join(required)}")
        return cls()
    found = r.fields(node, path, what, tuple(fields))
    kwargs: dict[str, object] = {}
    valid = True
    for key, (_, value_node) in found.items():
        spec = fields[key]
        if spec.null_means_default and is_null(value_node):
            continue
        ok, value = r.attempt(lambda s=spec, n=value_node, k=key: s.parse(r, n, join_key(path, k)))
        if ok:
            kwargs[spec.attr] = value
        valid = valid and ok
    missing = [key for key in required if key not in found or is_null(found[key][1])]
    if missing:
        r.report(node, path, f"{what} needs {' and '.join(missing)}")
        valid = False
    if not valid:
        raise InvalidValue
    return cls(**kwargs)


def _record_parser(
    what: str, cls: type, fields: Mapping[str, _Field], required: Sequence[str] = ()
) -> _Parse:
    return lambda r, node, path: _record(
        r, node, path, what=what, cls=cls, fields=fields, required=required
    )


def _choice_parser(*options: str) -> _Parse:
    def parse(r: YamlReader, node: Node, path: str) -> str:
        value = r.scalar(node, path)
        if value not in options:
            text = node.value if isinstance(node, ScalarNode) else ""
            close = difflib.get_close_matches(text, options, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            r.fail(
                node,
                path,
                f"must be one of {', '.join(options)}, not {r.describe(node)}{hint}",
            )
        return str(value)

    return parse


_DURATION_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(s|m|h)$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _duration_parser(*, zero_allowed: bool) -> _Parse:
    def parse(r: YamlReader, node: Node, path: str) -> float:
        value = r.scalar(node, path)
        seconds: float | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML integers are unbounded and float() is not: clamp first.
            seconds = float(max(-1, min(value, MAX_DURATION_SECONDS + 1)))
        elif isinstance(value, float):
            seconds = value
        elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
            seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        minimum = "0 (which disables it) or more" if zero_allowed else "more than 0"
        if seconds is None or not math.isfinite(seconds):
            r.fail(
                node,
                path,
                f"must be a duration: seconds as a number, or text such as '30s', '5m', "
                f"'1h'; not {r.describe(node)}",
            )
        if seconds < 0 or (seconds == 0 and not zero_allowed):
            r.fail(node, path, f"must be {minimum} seconds, not {node.value}")
        if seconds > MAX_DURATION_SECONDS:
            r.fail(node, path, f"{node.value} is longer than a week; is that a typo?")
        return seconds

    return parse


def read_path(r: YamlReader, node: Node, path: str) -> str:
    """An absolute file path (settings files, a hook's workdir)."""
    text = r.text(node, path, "a file path")
    if not text.startswith("/") or "\x00" in text:
        r.fail(
            node,
            path,
            f"must be an absolute path (starting with /), not {shorten(text)!r}; the daemon "
            "runs from /, so a relative path would not mean what it says",
        )
    return text


def _argv_parser(placeholders: frozenset[str] | None) -> _Parse:
    """A command as an argv list; ``placeholders`` (when given) are the ``{names}`` it may use."""

    def parse(r: YamlReader, node: Node, path: str) -> tuple[str, ...]:
        if isinstance(node, ScalarNode) and isinstance(r.scalar(node, path), str):
            r.fail(
                node,
                path,
                'must be a list of arguments such as ["nvidia-smi", "-r"], not one '
                "string: migd never runs a shell, so it would not split the words",
            )
        items = r.sequence(node, path, 'must be a list of arguments such as ["nvidia-smi", "-r"]')
        if not items:
            r.fail(node, path, "the command is empty; it needs at least the program to run")
        argv = r.each(items, path, lambda n, p: _read_argument(r, n, p, placeholders))
        if not argv[0]:
            r.fail(items[0], _index(path, 0), "the program name is empty")
        return tuple(argv)

    return parse


def _read_argument(
    r: YamlReader, node: Node, path: str, placeholders: frozenset[str] | None
) -> str:
    value = r.scalar(node, path)
    if not isinstance(value, str):
        hint = f' (quote it: "{node.value}")' if isinstance(node, ScalarNode) else ""
        r.fail(node, path, f"each argument must be text, not {r.describe(node)}{hint}")
    if "\x00" in value:
        r.fail(node, path, "an argument cannot contain a NUL character")
    if placeholders is not None:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError:
            r.fail(node, path, f"unbalanced braces in {shorten(value)!r}; write {{{{ for {{")
        unknown = sorted(names - placeholders)
        if unknown:
            known = ", ".join("{" + p + "}" for p in sorted(placeholders))
            r.fail(node, path, f"unknown placeholder {{{unknown[0]}}}; this command knows {known}")
    return value


_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@][A-Za-z0-9:_.\\@-]{0,255}$")


def read_units(r: YamlReader, node: Node, path: str) -> tuple[str, ...]:
    """A list of systemd unit names (settings.gpu-clients, the gpu-clients file)."""
    items = r.sequence(node, path, "must be a list of systemd unit names such as [kubelet.service]")
    return tuple(r.each(items, path, lambda n, p: _read_unit(r, n, p)))


def _read_unit(r: YamlReader, node: Node, path: str) -> str:
    unit = r.text(node, path, "a unit name")
    if not _UNIT_RE.match(unit):
        r.fail(
            node, path, f"{shorten(unit)!r} is not a systemd unit name (such as kubelet.service)"
        )
    return unit


def split_listen_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6]:PORT`` into host and port; ValueError says what is wrong."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        if not sep:
            raise ValueError(f"{address!r}: write an IPv6 address as [ADDRESS]:PORT")
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


def _read_listen_address(r: YamlReader, node: Node, path: str) -> str | None:
    if is_null(node):
        return None
    text = r.text(node, path, "the metrics address")
    if text == "":
        return None
    try:
        split_listen_address(text)
    except ValueError as exc:
        r.fail(node, path, str(exc))
    return text


_read_tls = _record_parser(
    "metrics.tls",
    TlsSettings,
    {
        "cert-file": _Field("cert_file", read_path),
        "key-file": _Field("key_file", read_path),
        "client-ca-file": _Field("client_ca_file", read_path),
    },
    required=("cert-file", "key-file"),
)


def _read_optional_tls(r: YamlReader, node: Node, path: str) -> TlsSettings | None:
    return None if is_null(node) else _read_tls(r, node, path)  # type: ignore[return-value]


def _read_retry(r: YamlReader, node: Node, path: str) -> RetrySettings:
    retry = _record(
        r,
        node,
        path,
        what="retry",
        cls=RetrySettings,
        fields={
            "initial": _Field("initial", _duration_parser(zero_allowed=False)),
            "max": _Field("max", _duration_parser(zero_allowed=False)),
        },
    )
    assert isinstance(retry, RetrySettings)
    if retry.initial > retry.max:
        r.fail(
            node,
            path,
            f"retry.initial ({retry.initial:g}s) is longer than retry.max ({retry.max:g}s)",
        )
    return retry


_SETTINGS_FIELDS: Mapping[str, _Field] = {
    "metrics": _Field(
        "metrics",
        _record_parser(
            "metrics",
            MetricsSettings,
            {
                "address": _Field("address", _read_listen_address, null_means_default=False),
                "tls": _Field("tls", _read_optional_tls),
            },
        ),
    ),
    "drift-check": _Field(
        "drift_check",
        _record_parser(
            "drift-check",
            DriftCheckSettings,
            {
                "interval": _Field("interval", _duration_parser(zero_allowed=True)),
                "policy": _Field("policy", _choice_parser("repair", "report")),
            },
        ),
    ),
    "boot-policy": _Field("boot_policy", _choice_parser("continue", "strict")),
    "retry": _Field("retry", _read_retry),
    "reset-command": _Field("reset_command", _argv_parser(RESET_COMMAND_PLACEHOLDERS)),
    "reset-timeout": _Field("reset_timeout", _duration_parser(zero_allowed=False)),
    "command-timeout": _Field("command_timeout", _duration_parser(zero_allowed=False)),
    "hooks-file": _Field("hooks_file", read_path),
    "gpu-clients": _Field(
        "gpu_clients",
        _record_parser(
            "gpu-clients",
            GpuClientsSettings,
            {"units": _Field("units", read_units), "file": _Field("file", read_path)},
        ),
    ),
    "device-plugin": _Field(
        "device_plugin",
        _record_parser(
            "device-plugin",
            DevicePluginSettings,
            {
                "strategy": _Field("strategy", _choice_parser("none", "single", "mixed")),
                "units": _Field("units", read_units),
            },
        ),
    ),
    "cdi-refresh-command": _Field("cdi_refresh_command", _argv_parser(None)),
    "mig-caps-command": _Field("mig_caps_command", _argv_parser(None)),
    "nfd": _Field("nfd", _record_parser("nfd", NfdSettings, {"path": _Field("path", read_path)})),
}


def _read_settings(r: YamlReader, node: Node, path: str) -> Settings:
    settings = _record(r, node, path, what="settings", cls=Settings, fields=_SETTINGS_FIELDS)
    assert isinstance(settings, Settings)
    return settings
