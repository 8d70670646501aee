"""Defensive loading: whatever the bytes, the result is a Config or a ConfigError.

The config is read by a root daemon, so hostile and broken input (alias bombs, deep
nesting, binary junk, huge numbers, YAML tags) must give a located message, never a
traceback, a hang or an object YAML should not build.
"""

from __future__ import annotations

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migd.core.config import Config
from migd.errors import ConfigError, Problem
from migd.formats.config_file import parse_config
from migd.formats.yaml_reader import MAX_CONFIG_BYTES, MAX_PROBLEMS

ENTRY = "\n    - devices: all\n      mig-enabled: false\n"


def problems(data: bytes | str) -> tuple[Problem, ...]:
    raw = data.encode() if isinstance(data, str) else data
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "in.yaml")
    assert info.value.problems, "a ConfigError always says what is wrong"
    return info.value.problems


def only(data: bytes | str) -> Problem:
    (problem,) = problems(data)
    return problem


def billion_laughs(levels: int) -> str:
    lines = ["version: v1", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 8) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_quickly() -> None:
    problem = only(billion_laughs(10))  # 8**10 nodes if expanded
    assert problem.line is None
    assert "alias bomb" in problem.message


def test_layouts_shared_through_aliases_are_fine() -> None:
    shared = "version: v1\nmig-configs:\n  base: &base" + ENTRY
    shared += "".join(f"  copy-{i}: *base\n" for i in range(100))
    config = parse_config(shared.encode(), "in.yaml")
    assert len(config.names) == 101
    (copy,) = config.entries("copy-99")
    assert (copy.devices, copy.mig_enabled, copy.path) == ("all", False, "mig-configs.copy-99[0]")


def test_recursive_alias_is_refused() -> None:
    problem = only("version: v1\nmig-configs: &loop\n  all-disabled: [*loop]\n")
    assert (problem.line, problem.column) == (3, 17)
    assert "recursive alias" in problem.message


def test_recursive_merge_is_refused() -> None:
    assert "recursive alias" in only("version: v1\nsettings: &s\n  <<: *s\n").message


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    problem = only("version: v1\nsettings: " + "[" * 5000 + "]" * 5000 + "\n")
    assert problem.line == 2
    assert "nested more than" in problem.message


def test_file_over_one_mib_is_refused() -> None:
    problem = only(b"version: v1\n" + b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    assert (problem.line, problem.path) == (None, "")
    assert "larger than 1024 KiB" in problem.message


def test_binary_junk_has_no_position() -> None:
    problem = only(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    assert problem.line is None
    assert "binary file" in problem.message


def test_non_utf8_names_the_line_and_column() -> None:
    problem = only(b"version: v1\n# caf\xe9\n")
    assert (problem.line, problem.column) == (2, 6)
    assert "not UTF-8" in problem.message and "0xE9" in problem.message


def test_control_characters_are_located() -> None:
    problem = only("version: v1\nmig-configs:\x1b[31m\n")
    assert (problem.line, problem.column) == (2, 13)
    assert "U+001B" in problem.message


def test_utf8_and_utf16_byte_order_marks_are_read() -> None:
    text = "version: v1\nmig-configs:\n  all-disabled:" + ENTRY
    for data in (b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16")):
        assert parse_config(data, "in.yaml").names == ("all-disabled",)


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ("version: v1\nsettings: !!python/object/apply:os.system [true]\n", "YAML tag"),
        ("version: v1\nsettings:\n  hooks-file: !!python/name:os.system\n", "cannot read"),
        ("version: v1\nsettings: !custom {}\n", "YAML tag !custom"),
        ("version: v1\nsettings: !!set {a}\n", "YAML tag !!set"),
        ("version: v1\nsettings:\n  hooks-file: !!binary aGk=\n", "must be text"),
        ("version: v1\nsettings:\n  command-timeout: 2026-13-45\n", "cannot read"),
        ("version: v1\nsettings:\n  command-timeout: " + "9" * 5000 + "\n", "cannot read"),
        ("version: v1\nsettings:\n  command-timeout: 1" + "0" * 400 + "\n", "longer than a week"),
        ("version: v1\nsettings:\n  command-timeout: -1" + "0" * 400 + "\n", "more than 0"),
        ("version: v1\nsettings:\n  boot-policy: 0x" + "f" * 5000 + "\n", "continue, strict"),
        (
            "version: v1\nmig-configs:\n  a:\n    - devices: 0x"
            + "f" * 5000
            + "\n      mig-enabled: false\n",
            "even for one GPU",
        ),
        (
            "version: v1\nmig-configs:\n  a:\n    - devices: all\n      device-filter: 0x"
            + "f" * 5000
            + "\n      mig-enabled: false\n",
            "quotes",
        ),
        ("version: v1\nsettings:\n  ? [a, b]\n  : 1\n", "plain name"),
        ("version: v1\nsettings:\n  <<: 5\n", "merges mappings only"),
        ("version: v1\n---\nversion: v1\n", "single document"),
        ("version: v1\nmig-configs: *nowhere\n", "undefined alias"),
        ('version: "\\U00110000"\n', "the parser stopped here"),
        ('"just a string"\n', "must be a YAML mapping"),
        ("{}\n", "version is missing"),
    ],
)
def test_hostile_or_odd_yaml_is_a_located_problem(document: str, fragment: str) -> None:
    problem = only(document)
    assert problem.line is not None and problem.line >= 1
    assert fragment in problem.message


def test_a_flood_of_problems_is_cut_short() -> None:
    found = problems("version: v1\n" + "".join(f"key-{i}: 1\n" for i in range(250)))
    assert len(found) == MAX_PROBLEMS + 1
    assert [p.line for p in found[:3]] == [2, 3, 4]
    assert found[-1].message == "… and 150 more"


def test_a_null_entry_and_a_null_config_are_errors() -> None:
    document = "version: v1\nmig-configs:\n  a:\n    -\n  b:\n"
    assert [(p.line, p.path) for p in problems(document)] == [
        (4, "mig-configs.a[0]"),
        (5, "mig-configs.b"),
    ]


# ---------------------------------------------------------------------------
# Property: any input yields a Config or a ConfigError
# ---------------------------------------------------------------------------

PROFILES = ["1g.18gb", "1g.18gb+me", "2g.35gb", "3g.71gb", "7g.141gb", "1c.2g.35gb", "3g", "1g+me"]
FILTERS = ["0x233510DE", "0x233010DE:0x16C010DE", "0x20b710de"]
names = st.text(alphabet=string.ascii_lowercase + string.digits + ".-", min_size=1, max_size=12)


@st.composite
def valid_entries(draw: st.DrawFn) -> dict[str, object]:
    entry: dict[str, object] = {
        "devices": draw(st.one_of(st.just("all"), st.lists(st.integers(0, 15), max_size=4)))
    }
    if draw(st.booleans()):
        entry["device-filter"] = draw(
            st.one_of(st.sampled_from(FILTERS), st.lists(st.sampled_from(FILTERS), max_size=3))
        )
    enabled = draw(st.booleans())
    entry["mig-enabled"] = enabled
    if enabled:
        counts = draw(st.dictionaries(st.sampled_from(PROFILES), st.integers(0, 7), max_size=4))
        if counts and not any(counts.values()):
            counts[next(iter(counts))] = 1
        entry["mig-devices"] = counts
    return entry


valid_documents = st.fixed_dictionaries(
    {
        "version": st.just("v1"),
        "mig-configs": st.dictionaries(
            names, st.lists(valid_entries(), min_size=1, max_size=3), min_size=1, max_size=4
        ),
    }
)

LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 2**40),
    st.integers(),
    st.floats(allow_nan=True),
    st.sampled_from(["all", "v1", "v2", "", "0x233510DE", "0x2330", "5m", "-x", *PROFILES]),
    st.text(max_size=8),
)
KEYS = st.sampled_from(
    [
        "version",
        "mig-configs",
        "selected-config",
        "settings",
        "devices",
        "device-filter",
        "mig-enabled",
        "mig-devices",
        "metrics",
        "address",
        "tls",
        "reset-command",
        "retry",
        "bogus",
        *PROFILES,
    ]
)
yamlish_values = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)
    ),
    max_leaves=20,
)
yamlish_documents = st.one_of(
    valid_documents, st.dictionaries(KEYS, yamlish_values, max_size=5), yamlish_values
)

SPECIAL = [":", "-", "[", "]", "{", "}", "&a", "*a", "!", "!!", '"', "'", "\t", "\n", " ", "#"]
SPECIAL += ["|", ">", "%", "@", "`", "<<: ", "? ", "---\n", "\x00", "\x07", "é", "\ufeff", "\\"]


@st.composite
def mutated_documents(draw: st.DrawFn) -> bytes:
    text = yaml.safe_dump(draw(yamlish_documents), sort_keys=False, allow_unicode=True)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "duplicate-line"]))
        if op == "insert":
            text = text[:at] + draw(st.sampled_from(SPECIAL)) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 5)) :]
        else:
            start = text.rfind("\n", 0, at) + 1
            end = text.find("\n", at)
            end = len(text) if end < 0 else end + 1
            text = text[:end] + text[start:end] + text[end:]
    return text.encode(draw(st.sampled_from(["utf-8", "utf-16", "latin-1"])), "replace")


def assert_config_or_config_error(data: bytes) -> Config | None:
    try:
        config = parse_config(data, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.file == "fuzz.yaml" and problem.message
            assert problem.line is None or problem.line >= 1
            assert str(problem).startswith("fuzz.yaml:")
            assert "\n" not in str(problem), "one problem, one line"
        return None
    assert isinstance(config, Config)
    for _, entries in config.mig_configs:
        assert entries
        for entry in entries:
            assert isinstance(entry.mig_enabled, bool)
            assert entry.mig_enabled or not entry.mig_devices
    return config


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(mutated_documents())
def test_yamlish_input_yields_config_or_config_error(data: bytes) -> None:
    assert_config_or_config_error(data)


@FUZZ
@given(st.one_of(st.binary(max_size=512), st.text(max_size=256).map(str.encode)))
def test_arbitrary_bytes_yield_config_or_config_error(data: bytes) -> None:
    assert_config_or_config_error(data)


@settings(max_examples=200, deadline=None)
@given(valid_documents)
def test_valid_documents_read_back_as_written(document: dict) -> None:
    text = yaml.safe_dump(document, sort_keys=False)
    config = assert_config_or_config_error(text.encode())
    assert config is not None, text
    written = document["mig-configs"]
    assert config.names == tuple(written)
    for name, entries in written.items():
        for read, wrote in zip(config.entries(name), entries, strict=True):
            devices = wrote["devices"]
            assert read.devices == (devices if devices == "all" else tuple(devices))
            assert read.mig_enabled == wrote["mig-enabled"]
            assert read.mig_devices == tuple(wrote.get("mig-devices", {}).items())
            filters = wrote.get("device-filter", [])
            filters = [filters] if isinstance(filters, str) else filters
            assert [str(f) for f in read.device_filters] == [
                f.upper().replace("X", "x") for f in filters
            ]
