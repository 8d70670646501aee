"""The ``settings:`` of a config file: the daemon's settings, and how each is read.

Every key is optional; a key left out or set to null takes its default (the values
and defaults are ``migd.core.config.Settings``). Each key names the dataclass field it
fills and how its value is read (:class:`_Field`): durations (``30s``, ``5m``), absolute
paths, commands as argv lists (never a string a shell would split), systemd unit
names, a listen address, a choice among words. Nested mappings (``metrics.tls``,
``retry``) are read the same way, field by field, with every problem reported.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from yaml.nodes import Node as YamlNode
from yaml.nodes import ScalarNode

from migd.core.config import (
    RESET_COMMAND_PLACEHOLDERS,
    DevicePluginSettings,
    DriftCheckSettings,
    GpuClientsSettings,
    MetricsSettings,
    NfdSettings,
    RetrySettings,
    Settings,
    TlsSettings,
    split_listen_address,
)
from migd.errors import shorten
from migd.formats.yaml_reader import (
    InvalidValue,
    YamlReader,
    is_null,
    item_key,
    join_key,
    read_argument,
    read_path,
    read_units,
)

# Durations longer than a week are typos (and overflow some timer APIs).
MAX_DURATION_SECONDS = 7 * 24 * 3600.0

_Parse = Callable[[YamlReader, YamlNode, str], object]


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
    node: YamlNode,
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
    def parse(r: YamlReader, node: YamlNode, path: str) -> str:
        value = r.scalar(node, path)
        if value not in options:
            text = node.value if isinstance(node, ScalarNode) else ""
            import difflib  # only for a value that is wrong: it is rare

            close = difflib.get_close_matches(text, options, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            r.fail(
                node,
                path,
                f"must be one of {', '.join(options)}, not {r.describe(node)}{hint}",
            )
        return str(value)

    return parse


_DURATION_RE = r"^([0-9]+(?:\.[0-9]+)?)(s|m|h)$"
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _duration_parser(*, zero_allowed: bool) -> _Parse:
    def parse(r: YamlReader, node: YamlNode, path: str) -> float:
        value = r.scalar(node, path)
        seconds: float | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML integers are unbounded and float() is not: clamp first.
            seconds = float(max(-1, min(value, MAX_DURATION_SECONDS + 1)))
        elif isinstance(value, float):
            seconds = value
        elif isinstance(value, str) and (m := re.match(_DURATION_RE, value)):
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


# More repairs than this in one window is a typo, not a policy.
MAX_COUNT = 1000


def _read_count(r: YamlReader, node: YamlNode, path: str) -> int:
    value = r.scalar(node, path)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        r.fail(
            node,
            path,
            f"must be a whole number from 0 (no limit) to {MAX_COUNT}, not {r.describe(node)}",
        )
    return value


def _argv_parser(placeholders: frozenset[str] | None) -> _Parse:
    """A command as an argv list; ``placeholders`` (when given) are the ``{names}`` it may use."""

    def parse(r: YamlReader, node: YamlNode, path: str) -> tuple[str, ...]:
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
            r.fail(items[0], item_key(path, 0), "the program name is empty")
        return tuple(argv)

    return parse


def _read_argument(
    r: YamlReader, node: YamlNode, path: str, placeholders: frozenset[str] | None
) -> str:
    value = read_argument(r, node, path, what="argument")
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


def _read_listen_address(r: YamlReader, node: YamlNode, path: str) -> str | None:
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


def _read_optional_tls(r: YamlReader, node: YamlNode, path: str) -> TlsSettings | None:
    return None if is_null(node) else _read_tls(r, node, path)  # type: ignore[return-value]


def _read_retry(r: YamlReader, node: YamlNode, path: str) -> RetrySettings:
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
                "max-repairs": _Field("max_repairs", _read_count),
                "window": _Field("window", _duration_parser(zero_allowed=False)),
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


def read_settings(r: YamlReader, node: YamlNode, path: str) -> Settings:
    settings = _record(r, node, path, what="settings", cls=Settings, fields=_SETTINGS_FIELDS)
    assert isinstance(settings, Settings)
    return settings
